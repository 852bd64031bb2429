"""Delta's diff looks only at the names `candidates` finds (in C, so a change to 1 of 10,000 clusters is one name
to look at): for any subscription, holdings and snapshot, every other name is one `change` has nothing to say of."""

from __future__ import annotations

from envoy.config.route.v3.route_pb2 import RouteConfiguration
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.xds.names import CLUSTER_TYPE, ROUTE_TYPE, SECRET_TYPE
from xds_server.xds.cache import CachedResource
from xds_server.xds.delta import Changes, Subscription, candidates, change

NAMES = [f"r{i}" for i in range(8)]
# A few resources per name, two of them with the same version (a rebuilt resource with the same content).
POOL = {
    name: [CachedResource(name, RouteConfiguration(name=name), b"", version, {}) for version in ("v1", "v1", "v2")]
    for name in NAMES
}
resources = st.dictionaries(st.sampled_from(NAMES), st.integers(0, 2)).map(
    lambda chosen: {name: POOL[name][index] for name, index in chosen.items()}
)
name_sets = st.sets(st.sampled_from(NAMES))


@settings(max_examples=500, deadline=None)
@given(
    type_url=st.sampled_from([CLUSTER_TYPE, ROUTE_TYPE, SECRET_TYPE]),
    wildcard=st.booleans(),
    names=name_sets,
    to_answer=name_sets,
    placeholders=name_sets,
    held=resources,
    available=resources,
)
def test_a_name_left_out_is_one_with_nothing_to_send_or_remove(
    type_url: str,
    wildcard: bool,
    names: set[str],
    to_answer: set[str],
    placeholders: set[str],
    held: dict[str, CachedResource],
    available: dict[str, CachedResource],
) -> None:
    sub = Subscription(wildcard=wildcard, names=names, to_answer=to_answer, placeholders=placeholders)
    found = candidates(sub, held, available)
    for name in set(NAMES) - found:
        changes = Changes()
        change(type_url, name, sub, held, available, changes)
        assert not changes and not changes.empty_forms, name
    # Of the names anything speaks of, what is left out is exactly what the client holds as the very resource
    # available, neither asked again nor unsubscribed.
    unchanged = {n for n in available if held.get(n) is available[n]} - to_answer
    if not wildcard:
        unchanged &= names
    assert (available.keys() | held.keys() | names | to_answer) - found == unchanged
