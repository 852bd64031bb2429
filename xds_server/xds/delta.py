"""Incremental ADS (`DeltaAggregatedResources`) over grpc.aio, following xds.md §1 (§1.8 for what is delta's own).

Per stream: the node from the first request; per type what the client subscribed to and what it holds (name -> the
CachedResource last sent, known to both sides by its content-hash `version`). A response carries only the difference:
resources the client lacks or holds in another version, and in `removed_resources` names it holds that are gone; one
snapshot change goes out in push order (CDS, EDS, LDS, RDS), one response per type that differs. ACKs get no answer.
A NACK is recorded; the client is taken to hold what it rejected, so that content is not sent again until it changes.

Subscriptions (xds_protocol.rst, "How the client specifies what resources to return" and "Incremental xDS"):
- LDS and CDS are wildcard when their first request names nothing (the legacy form Envoy uses); any type is
  wildcard once `*` is subscribed, until `*` is unsubscribed. Otherwise only named resources are sent.
- A subscribed name is answered even when the client seems to hold it (it may have forgotten it): with the resource,
  for EDS/RDS names the snapshot lacks with an empty ClusterLoadAssignment/RouteConfiguration (so a warming cluster
  or listener never waits; the real one follows when it appears), for other types with `removed_resources`.
- An unsubscribed name is forgotten without an answer, except under wildcard, where the client cannot tell whether
  the wildcard still covers it: it gets the resource again, or its name in `removed_resources`.
- Subscription changes are honoured whatever nonce the request carries; only ACK/NACK needs the type's latest nonce.
- `initial_resource_versions` (first request of a type after a reconnect) counts as held: resources the client has
  in the current version are not sent again, names the snapshot no longer has go in `removed_resources`.

Make before break: when a snapshot change removes clusters while it also updates listeners or routes, those clusters
(and their CLAs) stay out of `removed_resources` and remain available to EDS subscriptions; they are removed in a
later response, once the client has ACKed that change's LDS and RDS responses (or later ones), so no route Envoy
still holds points at a cluster it no longer has. Clusters removed while such a release is pending wait for it too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress
from operator import is_not

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from translators.xds.names import CLUSTER_TYPE, ENDPOINT_TYPE
from xds_server import metrics
from xds_server.xds.cache import (
    PUSH_ORDER,
    ROUTING_TYPES,
    WILDCARD_TYPES,
    CachedResource,
    Snapshot,
    SnapshotCache,
    empty_resource,
)
from xds_server.xds.streams import ClientRegistry, ClientStream, XdsProtocol, short_type

log = logging.getLogger(__name__)
WILDCARD = "*"


@dataclass
class Subscription:
    """One type on one stream, beyond TypeState (which keeps the nonce, versions and what the client holds)."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)  # subscribed by name
    to_answer: set[str] = field(default_factory=set)  # answered by the next response, even if the client holds them
    placeholders: set[str] = field(default_factory=set)  # held as the empty form: the snapshot lacked them
    initial_versions: dict[str, str] = field(default_factory=dict)  # from a reconnect, until a snapshot is compared
    reconciled_with: str | None = None  # the type version the client's holdings were last compared with


@dataclass
class Changes:
    send: dict[str, CachedResource] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    empty_forms: set[str] = field(default_factory=set)  # names in `send` answered with the empty form

    def __bool__(self) -> bool:
        return bool(self.send or self.removed)


def candidates(
    sub: Subscription, held: Mapping[str, CachedResource], available: Mapping[str, CachedResource]
) -> set[str]:
    """The names whose answer may differ from what the client holds (`change` does nothing for any other): those
    not held as the very resource now available, found in C (a wildcard CDS of 10,000 clusters of which one changed
    is one name to look at), and every name that is asked, unanswered, gone or no longer subscribed."""
    names = list(available)
    found = set(compress(names, map(is_not, map(held.get, names), available.values())))
    found |= sub.names - available.keys()
    found |= sub.to_answer
    found |= held.keys() - available.keys()
    if not sub.wildcard:
        found |= held.keys() - sub.names
    return found


def change(
    type_url: str,
    name: str,
    sub: Subscription,
    held: Mapping[str, CachedResource],
    available: Mapping[str, CachedResource],
    changes: Changes,
) -> None:
    """Adds what the client must be sent or told is gone of `name`, if anything."""
    current = available.get(name)
    holding = held.get(name)
    if name in sub.names or (sub.wildcard and current is not None):
        if current is not None:
            if name in sub.to_answer or holding is None or holding.version != current.version:
                changes.send[name] = current
        elif name in sub.to_answer:
            empty = empty_resource(type_url, name)
            if empty is None:
                changes.removed.add(name)  # delta's "does not exist"
            else:
                changes.send[name] = empty
                changes.empty_forms.add(name)
        elif holding is not None and name not in sub.placeholders:
            changes.removed.add(name)  # held, and gone from the snapshot
    elif holding is not None or name in sub.to_answer:
        changes.removed.add(name)  # gone from the wildcard, or unsubscribed and not covered by it


class DeltaSession:
    """One delta stream: its subscriptions and what to send when a request or a new snapshot arrives."""

    def __init__(self, stream: ClientStream, cache: SnapshotCache, clients: ClientRegistry) -> None:
        self._stream = stream
        self._cache = cache
        self._clients = clients
        self._subscriptions: dict[str, Subscription] = {}

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        type_url = request.type_url
        state = self._stream.state(type_url)
        self._subscribe(type_url, request)
        if request.response_nonce and request.response_nonce == str(state.nonce):
            if request.HasField("error_detail"):
                log.warning(
                    "NACK from %s for %s version %s: %s",
                    self._stream.node_id,
                    short_type(type_url),
                    state.sent_version,
                    request.error_detail.message,
                )
                self._clients.nacked(self._stream, type_url, request.error_detail.message)
            else:
                self._clients.acked(self._stream, type_url)
        snapshot = self._cache.get(self._stream.key)
        if snapshot is None:
            return []  # subscriptions are kept; the first snapshot answers them
        if self._stream.retention.due(self._stream.types):
            self._stream.retention.release()
            for retaining_type in (CLUSTER_TYPE, ENDPOINT_TYPE):
                if retaining_type in self._subscriptions:
                    self._subscriptions[retaining_type].reconciled_with = None
            return self._push(snapshot, PUSH_ORDER)
        # An EDS request may deliver the CLAs that held listeners and routes back (see _push).
        return self._push(snapshot, [type_url, *ROUTING_TYPES] if type_url == ENDPOINT_TYPE else [type_url])

    def on_change(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        snapshot = self._cache.get(self._stream.key)
        return [] if snapshot is None else self._push(snapshot, PUSH_ORDER)

    def on_retry(self, type_url: str) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Every resource of the type the client holds, sent again though it rejected some: a listener it could not
        bind is tried anew (the others are unchanged, so Envoy keeps them as they are)."""
        snapshot = self._cache.get(self._stream.key)
        sub = self._subscriptions.get(type_url)
        if snapshot is None or sub is None:
            return []
        sub.to_answer |= self._stream.state(type_url).sent.keys()
        return self._push(snapshot, [type_url])

    def _subscribe(self, type_url: str, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        sub = self._subscriptions.get(type_url)
        if sub is None:
            legacy_wildcard = type_url in WILDCARD_TYPES and not subscribe and not unsubscribe
            sub = self._subscriptions[type_url] = Subscription(wildcard=legacy_wildcard)
            sub.initial_versions = dict(request.initial_resource_versions)
        held = self._stream.state(type_url).sent
        # The wildcard first, so that names unsubscribed along with it are simply forgotten.
        if WILDCARD in subscribe:
            sub.wildcard = True
        if WILDCARD in unsubscribe:
            sub.wildcard = False
            for name in [name for name in held if name not in sub.names]:  # the client drops these itself
                self._forget(type_url, name)
        named = subscribe - {WILDCARD}
        sub.names |= named
        sub.to_answer |= named
        for name in unsubscribe - {WILDCARD}:
            sub.names.discard(name)
            sub.to_answer.discard(name)
            if sub.wildcard:
                sub.to_answer.add(name)  # still covered by the wildcard or not: the client must be told which
            else:
                self._forget(type_url, name)
        if subscribe or unsubscribe:
            sub.reconciled_with = None
        self._stream.state(type_url).names = None if sub.wildcard else frozenset(sub.names)

    def _forget(self, type_url: str, name: str) -> None:
        self._stream.state(type_url).sent.pop(name, None)
        self._subscriptions[type_url].placeholders.discard(name)

    def _push(self, snapshot: Snapshot, type_urls: Iterable[str]) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """What each of `type_urls` lacks, in push order; make before break when clusters go and routing changes."""
        wanted = set(type_urls)
        changes: dict[str, Changes] = {}
        for type_url in PUSH_ORDER:
            sub = self._subscriptions.get(type_url)
            if type_url not in wanted or sub is None:
                continue
            if sub.reconciled_with == snapshot.version(type_url) and not sub.to_answer and not sub.initial_versions:
                continue  # nothing can differ: the cheap path for every ACK
            changes[type_url] = self._changes(type_url, sub, self._available(snapshot, type_url))
        self._withhold_removed_clusters(changes)
        responses = []
        for type_url, type_changes in changes.items():
            if type_url in ROUTING_TYPES and type_changes and self._stream.clusters_warming():
                break  # routes to a cluster without its CLA would fail: sent after the EDS request (on_request)
            sub = self._subscriptions[type_url]
            sub.reconciled_with = snapshot.version(type_url)
            sub.to_answer.clear()
            if type_changes:
                responses.append(self._response(type_url, snapshot, type_changes))
        return responses

    def _available(self, snapshot: Snapshot, type_url: str) -> Mapping[str, CachedResource]:
        resources = snapshot.resources(type_url)
        retained = self._stream.retention.of(type_url)
        return {**retained, **resources} if retained else resources

    def _changes(self, type_url: str, sub: Subscription, available: Mapping[str, CachedResource]) -> Changes:
        held = self._stream.state(type_url).sent
        changes = Changes()
        for name, version in sub.initial_versions.items():
            current = available.get(name)
            if current is None and name in sub.names:
                current = empty_resource(type_url, name)
            if current is None:
                changes.removed.add(name)  # held from before the reconnect, gone since
            elif current.version == version:
                held[name] = current  # the client has it: nothing to send
                sub.to_answer.discard(name)
                if name not in available:
                    sub.placeholders.add(name)
        sub.initial_versions = {}
        for name in candidates(sub, held, available):
            change(type_url, name, sub, held, available, changes)
        return changes

    def _withhold_removed_clusters(self, changes: dict[str, Changes]) -> None:
        """Keeps clusters (and their CLAs) out of this push's removals when its listeners or routes change."""
        clusters = changes.get(CLUSTER_TYPE)
        if clusters is None or not clusters.removed:
            return
        routing = [type_url for type_url in ROUTING_TYPES if changes.get(type_url)]
        # While earlier removals wait, the client may still run routes older than this snapshot: wait for them too.
        if not routing and not self._stream.retention:
            return
        held = self._stream.retain_removed_clusters(clusters.removed, routing)
        clusters.removed -= held
        if ENDPOINT_TYPE in changes:
            changes[ENDPOINT_TYPE].removed -= self._stream.retention.of(ENDPOINT_TYPE).keys()

    def _response(self, type_url: str, snapshot: Snapshot, changes: Changes) -> discovery_pb2.DeltaDiscoveryResponse:
        state = self._stream.state(type_url)
        sub = self._subscriptions[type_url]
        state.sent.update(changes.send)
        for name in changes.removed:
            state.sent.pop(name, None)
        sub.placeholders = (sub.placeholders - changes.send.keys() - changes.removed) | changes.empty_forms
        version = snapshot.version(type_url)
        state.built_from = state.sent_version = version  # debug only in delta, like system_version_info
        nonce = self._clients.next_nonce()
        self._stream.responded(type_url, nonce)
        resources = [
            discovery_pb2.Resource(
                name=name, version=cached.version, resource=any_pb2.Any(type_url=type_url, value=cached.serialized)
            )
            for name, cached in sorted(changes.send.items())
        ]
        metrics.PUSHES.labels(self._stream.key, short_type(type_url), XdsProtocol.DELTA).inc()
        metrics.PUSH_BYTES.labels(short_type(type_url), XdsProtocol.DELTA).inc(
            sum(len(cached.serialized) for cached in changes.send.values())
        )
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            resources=resources,
            removed_resources=sorted(changes.removed),
            nonce=str(nonce),
        )
