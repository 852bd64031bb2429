"""Shared pieces of the resource models: metadata, references, durations, the pydantic base class."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# RFC 1123 subdomain, the rule Kubernetes applies to most object names.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DURATION_PART = re.compile(r"(\d+)(h|ms|m|s)")
# Gateway API Duration: at most four parts of at most five digits each, so it always fits Envoy's Duration.
_DURATION = re.compile(r"^([0-9]{1,5}(h|ms|m|s)){1,4}$")
# Gateway API Hostname: lowercase, optionally one leading wildcard label.
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def shown(value: str, limit: int = 64) -> str:
    """A value quoted in an error, cut so that a huge one cannot make a huge message."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


class K8sModel(BaseModel):
    """Base of every model: immutable, camelCase on the wire, unknown fields ignored as an API server prunes them."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _check_name(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(f"{shown(value)} is not a valid name (lowercase RFC 1123 subdomain)")
    return value


ObjectName = Annotated[str, AfterValidator(_check_name)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


def parse_duration_ms(value: str) -> int:
    """Gateway API duration ("1h30m", "500ms", "10s") in milliseconds."""
    if not _DURATION.match(value):
        raise ValueError(f"{shown(value)} is not a duration like 10s, 500ms or 1h30m (at most 5 digits per unit)")
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(value))


def _check_duration(value: str) -> str:
    parse_duration_ms(value)
    return value


Duration = Annotated[str, AfterValidator(_check_duration)]


def _check_hostname(value: str) -> str:
    if len(value) > 253 or not _HOSTNAME.match(value):
        raise ValueError(f"{shown(value)} is not a valid hostname (lowercase, optionally starting with '*.')")
    return value


Hostname = Annotated[str, AfterValidator(_check_hostname)]


class ObjectMeta(K8sModel):
    name: ObjectName
    namespace: ObjectName | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = None
    generation: int = 0  # set by the API server on every spec change; 0 for objects read from files
    deletion_timestamp: str | None = None


class LabelSelector(K8sModel):
    match_labels: dict[str, str] = Field(default_factory=dict)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


class Resource(K8sModel):
    """A top-level object. Subclasses set the class variables that place them in the API."""

    group: ClassVar[str]
    kind: ClassVar[str]
    versions: ClassVar[tuple[str, ...]]
    namespaced: ClassVar[bool] = True

    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The namespace ("" for cluster-scoped kinds); the loader fills in `default` for namespaced kinds."""
        return self.metadata.namespace or ""

    @property
    def seniority(self) -> tuple[str, str, str]:
        """Gateway API's order between conflicting objects: the oldest first, then by namespace/name."""
        return (self.metadata.creation_timestamp or "", self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespaced else self.name
