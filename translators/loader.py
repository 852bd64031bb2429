"""Parses Kubernetes-style YAML with `kubectl apply -f` semantics into typed, validated objects (pure: the files
themselves are read by `xds_server.sources.files`).

Files are read in name order and documents in order; a later object with the same kind/namespace/name replaces
the earlier one. An invalid document becomes a `LoadError` (file, document, kind/namespace/name, field, reason)
and leaves every other object, including an earlier valid version of the same object, in place.
"""

from __future__ import annotations

import bisect
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import compress
from typing import Any, NamedTuple, TypeVar, cast

import yaml
from pydantic import ValidationError

from translators.resources import MODELS, Resource, split_api_version
from translators.resources.fields import TooLarge, unknown_fields
from translators.resources.gateway_api import GATEWAY_API_GROUP
from translators.tracking import Reads, Tracker

log = logging.getLogger(__name__)

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _YamlLoader(_BaseLoader):  # type: ignore[valid-type,misc]  # CSafeLoader or SafeLoader, chosen at import
    """YAML as Kubernetes reads it: an unquoted date (`version: 2024-10-21`, an Azure api-version) stays the string
    it was written as, where YAML 1.1 would make it a date that no string field accepts."""

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }


DEFAULT_NAMESPACE = "default"

R = TypeVar("R", bound=Resource)
V = TypeVar("V")


class ObjectKey(NamedTuple):
    """A tuple, so that hashing and comparing it (every lookup of every object) run in C."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Origin:
    """Where an object came from: a file and the 1-based number of the document in it (0: not from a file, e.g.
    `kubernetes`, the API server)."""

    file: str
    document: int


@dataclass(frozen=True)
class LoadError:
    origin: Origin
    kind: str
    namespace: str
    name: str
    field: str
    reason: str

    def __str__(self) -> str:
        place = f"{self.origin.file} document {self.origin.document}" if self.origin.document else self.origin.file
        if not (self.kind or self.name):  # about the file or the document itself: no object to name
            return f"{place}: {self.reason}"
        who = "/".join(part for part in (self.kind or "?", self.namespace, self.name or "?") if part)
        where = f" field {self.field}:" if self.field else ""
        return f"{place}: {who}:{where} {self.reason}"


@dataclass(frozen=True, order=True)
class Reference:
    """A reference an object of an unknown kind makes, with the API's defaults filled in: `parent` for
    `spec.parentRefs[]` and `spec.parentRef` (the object attaches to the one named, as a route to its Gateway;
    group and kind default to Gateway API's Gateway), else `spec.targetRef` or `spec.targetRefs[]` (a policy applies
    to the one named). The namespace defaults to the object's."""

    parent: bool
    group: str
    kind: str
    namespace: str
    name: str
    section_name: str | None = None
    port: int | None = None


REFERENCE_LIMIT = 64  # more than any of these kinds allows (parentRefs: 32, targetRefs: 16)


@dataclass(frozen=True)
class UnknownObject:
    """A document of a kind the project does not read (RBAC, ServiceAccount, SecurityPolicy, ...), kept for
    reporting, with the references it makes and its metadata.generation."""

    api_version: str
    kind: str
    namespace: str
    name: str
    origin: Origin
    references: tuple[Reference, ...] = ()
    generation: int = 0


# A test of one object alone (ResourceSet.matching).
Selection = Callable[[Any], object]

# The models that alone have their kind: the loader makes every object of that kind with it.
_KIND_COUNTS = Counter(model.kind for model in MODELS.values())
_ONE_MODEL_PER_KIND = frozenset(model for model in MODELS.values() if _KIND_COUNTS[model.kind] == 1)


@dataclass(frozen=True)
class ResourceSet:
    objects: Mapping[ObjectKey, Resource] = field(default_factory=dict)
    origins: Mapping[ObjectKey, Origin] = field(default_factory=dict)
    unknown: tuple[UnknownObject, ...] = ()
    errors: tuple[LoadError, ...] = ()
    # Served objects read from an API server with fields the translator does not read (see `ignored_fields`).
    ignored: Mapping[ObjectKey, tuple[str, ...]] = field(default_factory=dict)
    # Mistakes that refuse nothing: an object defined twice, differently (the later is served).
    warnings: tuple[LoadError, ...] = ()
    # Sees what the translation reads (see translators.tracking); None outside a translation.
    tracker: Tracker | None = field(default=None, compare=False, repr=False)
    # The set it was made from, weakly (no chain of sets kept alive), and the keys added, removed or replaced since.
    _changes: tuple[weakref.ref[ResourceSet], frozenset[ObjectKey]] | None = field(
        default=None, compare=False, repr=False
    )

    def with_changes(self, previous: ResourceSet, changed: frozenset[ObjectKey]) -> ResourceSet:
        """The same set, knowing it is `previous` with the objects of `changed` added, removed or replaced."""
        return replace(self, _changes=(weakref.ref(previous), changed))

    def changed_since(self, previous: ResourceSet) -> frozenset[ObjectKey] | None:
        """The keys added, removed or replaced since `previous`, when this set was made from it (else None)."""
        if self._changes is None or self._changes[0]() is not previous:
            return None
        return self._changes[1]

    def tracked(self) -> ResourceSet:
        """The same objects, with a new tracker of what is read of them."""
        tracked = replace(self, tracker=Tracker())
        index = self._by_kind()  # the same objects: the same index
        object.__setattr__(tracked, "_kind_keys", self.__dict__["_kind_keys"])
        object.__setattr__(tracked, "_kind_index", index)
        object.__setattr__(tracked, "_matching", self.__dict__.setdefault("_matching", {}))  # shared: kept with this
        return tracked

    def of_kind(self, model: type[R]) -> list[R]:
        """Every object of one kind, in key order (namespace, name), never in document order."""
        if self.tracker is not None:
            self.tracker.kind(model.kind)
        return self.untracked_of_kind(model)

    def untracked_of_kind(self, model: type[R]) -> list[R]:
        """`of_kind` for a caller that records, itself, which of the objects each of its answers derives from."""
        found = self._by_kind().get(model.kind, ())
        if model in _ONE_MODEL_PER_KIND:  # every object of its kind is one: a copy in C, not a check per object
            return cast(list[R], list(found))
        return [obj for obj in found if isinstance(obj, model)]

    def _by_kind(self) -> dict[str, list[Resource]]:
        """Each kind's objects in key order (namespace, name), never in document order: indexed once per set."""
        index: dict[str, list[Resource]] | None = self.__dict__.get("_kind_index")
        if index is None:
            keys: dict[str, list[ObjectKey]] = {}
            for key in sorted(self.objects):
                keys.setdefault(key.kind, []).append(key)
            index = {kind: list(map(self.objects.__getitem__, found)) for kind, found in keys.items()}
            object.__setattr__(self, "_kind_keys", keys)  # caches of a frozen value: not fields
            object.__setattr__(self, "_kind_index", index)
        return index

    def index_from(self, previous: ResourceSet, changed: Iterable[tuple[str, str, str]]) -> None:
        """Indexes this set by kind from `previous`'s index, knowing which keys changed between the two: the kinds
        nothing changed of keep their lists, the others move only their changed keys (a reload of 10,000 routes
        would otherwise sort every key again). The same for `matching`'s lists, testing only changed objects."""
        if "_kind_index" in self.__dict__:
            return
        previous._by_kind()
        keys: dict[str, list[ObjectKey]] = dict(previous.__dict__["_kind_keys"])
        index: dict[str, list[Resource]] = dict(previous.__dict__["_kind_index"])
        touched: dict[str, list[ObjectKey]] = {}
        for kind, namespace, name in changed:
            touched.setdefault(kind, []).append(ObjectKey(kind, namespace, name))
        for kind, moved in touched.items():  # copies: the previous set's lists stay as they are
            keys[kind], index[kind] = list(keys.get(kind, ())), list(index.get(kind, ()))
            for key in moved:
                _move(keys[kind], index[kind], key, self.objects.get(key))
            if not keys[kind]:
                del keys[kind], index[kind]
        matching: dict[tuple[type[Resource], Selection], tuple[list[ObjectKey], list[Resource]]] = {}
        for (model, test), (selected_keys, selected) in previous.__dict__.get("_matching", {}).items():
            if model.kind in touched:
                selected_keys, selected = list(selected_keys), list(selected)
                for key in touched[model.kind]:
                    found = self.objects.get(key)
                    passes = isinstance(found, model) and test(found)
                    _move(selected_keys, selected, key, found if passes else None)
            matching[(model, test)] = (selected_keys, selected)
        object.__setattr__(self, "_kind_keys", keys)  # caches of a frozen value: not fields
        object.__setattr__(self, "_kind_index", index)
        object.__setattr__(self, "_matching", matching)

    def matching(self, model: type[R], test: Selection) -> list[R]:
        """The objects of a kind that pass `test`, in key order, for a caller that records its reads itself (as
        `untracked_of_kind`). `test` reads each object alone (a module-level attrgetter, say: it is also the cache's
        key), so a set indexed from this one (`index_from`) tests only the objects that changed."""
        cache: dict[tuple[type[Resource], Selection], tuple[list[ObjectKey], list[Resource]]]
        cache = self.__dict__.setdefault("_matching", {})
        found = cache.get((model, test))
        if found is None:
            objects = self._by_kind().get(model.kind, [])  # beside their keys, in the same order
            if model in _ONE_MODEL_PER_KIND:  # in C
                passed = list(map(test, objects))
            else:
                passed = [isinstance(obj, model) and bool(test(obj)) for obj in objects]
            kept_keys = list(compress(self.__dict__["_kind_keys"].get(model.kind, ()), passed))
            found = cache[(model, test)] = (kept_keys, list(compress(objects, passed)))
        return cast(list[R], list(found[1]))

    def get(self, model: type[R], namespace: str, name: str) -> R | None:
        key = ObjectKey(model.kind, namespace if model.namespaced else "", name)
        if self.tracker is not None:
            self.tracker.key(key)
        obj = self.objects.get(key)
        return obj if isinstance(obj, model) else None

    def read_selection(self, model: type[Resource], namespace: str, labels: Mapping[str, str]) -> None:
        """Records that an answer derives from which objects of a kind `labels` select in `namespace` (found in an
        index of the kind): a change to any object selected before or after invalidates it."""
        if self.tracker is not None:
            self.tracker.selection(model.kind, namespace, labels)

    def read(self, model: type[Resource], namespace: str, name: str) -> None:
        """Records a read of one object an answer derives from, found without `get` (in an index of the kind)."""
        if self.tracker is not None:
            self.tracker.key((model.kind, namespace if model.namespaced else "", name))

    @contextmanager
    def no_dependency(self) -> Iterator[None]:
        """What is read inside is no dependency of anything (a status listed again at every translation)."""
        if self.tracker is None:
            yield
            return
        with self.tracker.reading():  # a frame of its own, forgotten
            yield

    def cached(self, cache: MutableMapping[Hashable, tuple[V, Reads]], key: Hashable, compute: Callable[[], V]) -> V:
        """`compute()` once per key: a per-translation cache whose users each depend on what it read."""
        if self.tracker is not None:
            return self.tracker.cached(cache, key, compute)
        found = cache.get(key)
        if found is None:
            found = cache[key] = (compute(), Reads())
        return found[0]


def _move(ordered: list[ObjectKey], objects: list[Resource], key: ObjectKey, found: Resource | None) -> None:
    """One change to a sorted list of keys and the list of their objects: `key` is now `found`, or is gone (None)."""
    at = bisect.bisect_left(ordered, key)
    present = at < len(ordered) and ordered[at] == key
    if found is not None and present:
        objects[at] = found
    elif found is not None:
        ordered.insert(at, key)
        objects.insert(at, found)
    elif present:
        del ordered[at], objects[at]


def ignored_fields(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields of a stored object that the CRDs this project was built with do not have: an API server whose CRD
    is of another version kept them, and the translator does not read them."""
    group, version = split_api_version(str(raw.get("apiVersion") or ""))
    try:
        return tuple(unknown_fields(group, version, str(raw.get("kind") or ""), raw))
    except TooLarge:
        return ()


def object_key(obj: Resource) -> ObjectKey:
    return ObjectKey(obj.kind, obj.namespace, obj.name)


def parse_document(raw: Any, origin: Origin, strict_fields: bool = True) -> Resource | UnknownObject | list[LoadError]:
    """One decoded YAML document -> a validated object, an unknown object, or its errors. `strict_fields`: a field
    the CRDs do not have refuses the object (files, as the API server's strict field validation would); otherwise
    (an object an API server stored, so its own CRD has the field) it is left to `ignored_fields` to report."""
    if not isinstance(raw, dict):
        return [LoadError(origin, "", "", "", "", f"document is a {type(raw).__name__}, not a mapping")]
    kind = raw.get("kind")
    api_version = raw.get("apiVersion")
    metadata: dict[str, Any] = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    name = str(metadata.get("name") or "")
    namespace = str(metadata.get("namespace") or "")

    def error(path: str, reason: str) -> list[LoadError]:
        return [LoadError(origin, str(kind or ""), namespace, name, path, reason)]

    if not isinstance(kind, str) or not kind:
        return error("kind", "kind is required")
    if not isinstance(api_version, str) or not api_version:
        return error("apiVersion", "apiVersion is required")
    group, version = split_api_version(api_version)
    model = MODELS.get((group, kind))
    if model is None:
        log.debug("keeping aside object of unknown kind", extra={"kind": kind, "apiVersion": api_version})
        generation = metadata.get("generation")
        generation = generation if isinstance(generation, int) and not isinstance(generation, bool) else 0
        spec = raw.get("spec")
        references = unknown_references(spec, namespace or DEFAULT_NAMESPACE) if isinstance(spec, dict) else ()
        return UnknownObject(api_version, kind, namespace, name, origin, references, generation)
    if model.namespaced and not namespace:
        namespace = DEFAULT_NAMESPACE
    if version not in model.versions:
        return error("apiVersion", f"version {version} of {kind} is not supported (use {', '.join(model.versions)})")
    try:
        unknown = unknown_fields(group, version, kind, raw) if strict_fields else []
    except TooLarge as exc:
        return error("", str(exc))
    if unknown:  # refused whole, as the API server's strict field validation refuses it: never half-understood
        return [
            LoadError(origin, kind, namespace if model.namespaced else "", name, path, "unknown field")
            for path in unknown
        ]
    try:
        obj = model.model_validate(raw)
    except ValidationError as exc:
        return [
            LoadError(
                origin,
                kind,
                namespace if model.namespaced else "",
                name,
                _field_path(err["loc"]),
                _reason(err["msg"]),
            )
            for err in exc.errors()
        ]
    return _with_namespace(obj)


REFERENCE_FIELDS = ("parentRefs", "parentRef", "targetRef", "targetRefs")


def unknown_references(spec: Mapping[str, Any], namespace: str) -> tuple[Reference, ...]:
    """The references in an unknown kind's spec (REFERENCE_FIELDS), in spec order; malformed entries (no name, not
    a mapping) are skipped: nothing validated the object."""
    found: list[Reference] = []
    for field_name in REFERENCE_FIELDS:
        value = spec.get(field_name)
        entries = value if isinstance(value, list) else [value] if value is not None else []
        parent = field_name.startswith("parent")
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"]:
                continue
            group, kind = entry.get("group"), entry.get("kind")
            section, port = entry.get("sectionName"), entry.get("port")
            found.append(
                Reference(
                    parent,
                    group if isinstance(group, str) else GATEWAY_API_GROUP,
                    kind if isinstance(kind, str) else ("Gateway" if parent else ""),
                    entry["namespace"] if isinstance(entry.get("namespace"), str) and entry["namespace"] else namespace,
                    entry["name"],
                    section if isinstance(section, str) else None,
                    port if isinstance(port, int) and not isinstance(port, bool) else None,
                )
            )
    return tuple(found[:REFERENCE_LIMIT])


def _with_namespace(obj: R) -> R:
    wanted = (obj.metadata.namespace or DEFAULT_NAMESPACE) if obj.namespaced else None
    if obj.metadata.namespace == wanted:
        return obj
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"namespace": wanted})})


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _reason(message: str) -> str:
    return message.removeprefix("Value error, ")


CYCLE = "a YAML alias names a node that contains it: the document would be infinite"


def _contains_itself(root: Any) -> bool:
    """Whether a decoded document holds itself (`a: &x {b: *x}` decodes so): each list and mapping is entered once,
    so a shared (aliased) node costs one visit, however often it is repeated."""
    finished: set[int] = set()
    entered: set[int] = set()
    stack: list[tuple[Any, Iterator[Any]]] = []

    def enter(value: Any) -> bool:
        if not isinstance(value, dict | list) or id(value) in finished:
            return False
        if id(value) in entered:
            return True  # reached again from inside itself
        entered.add(id(value))
        stack.append((value, iter(value.values() if isinstance(value, dict) else value)))
        return False

    if enter(root):
        return True
    while stack:
        value, children = stack[-1]
        child = next(children, stack)
        if child is stack:  # all its children done
            stack.pop()
            entered.discard(id(value))
            finished.add(id(value))
        elif enter(child):
            return True
    return False


def _documents(text: str, file: str) -> Iterator[tuple[Any, Origin] | LoadError]:
    number = 0
    aliased = "*" in text and "&" in text  # only aliases make cycles: most files need no walk
    try:
        for number, raw in enumerate(yaml.load_all(text, Loader=_YamlLoader), start=1):
            if raw is None:  # an empty document, e.g. a leading or doubled `---`
                continue
            if aliased and _contains_itself(raw):
                yield LoadError(Origin(file, number), "", "", "", "", CYCLE)
                continue
            if isinstance(raw, dict) and raw.get("kind") == "List" and isinstance(raw.get("items"), list):
                for item in raw["items"]:
                    yield item, Origin(file, number)
                continue
            yield raw, Origin(file, number)
    except Exception as exc:  # PyYAML constructors raise ValueError, KeyError, ... on bad scalars, not only YAMLError
        yield LoadError(Origin(file, number + 1), "", "", "", "", _yaml_reason(exc))


def _yaml_reason(exc: Exception) -> str:
    """`line L, column C: what` from PyYAML's marked errors, without its echo of the input."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        reason = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            start = exc.context_mark
            reason += f" ({exc.context} started at line {start.line + 1}, column {start.column + 1})"
        return reason
    return f"invalid YAML: {exc}".replace("\n", " ")


class Loaded(NamedTuple):
    """A valid object of a document, with its key computed once (a file watcher keeps a file's parse)."""

    obj: Resource
    origin: Origin
    key: ObjectKey


Parsed = Loaded | UnknownObject | LoadError


def parse_text(file: str, text: str) -> tuple[Parsed, ...]:
    """One file's documents, parsed and validated, in order: the unit a file watcher can cache."""
    results: list[Parsed] = []
    for item in _documents(text, file):
        if isinstance(item, LoadError):
            results.append(item)
            continue
        parsed = parse_document(*item)
        if isinstance(parsed, list):
            results.extend(parsed)
        elif isinstance(parsed, UnknownObject):
            results.append(parsed)
        else:
            results.append(Loaded(parsed, item[1], object_key(parsed)))
    return tuple(results)


def combine(parsed_files: Iterable[Sequence[Parsed]]) -> ResourceSet:
    """Parsed files, in apply order, -> a ResourceSet. A later object with the same kind, namespace and name replaces
    the earlier, as `kubectl apply -f` would (so files and a cluster serve the same), but never silently: when the two
    differ, it is a warning naming both places (a stale copy left in another file is a mistake the user must hear of).
    The same object again is not: tutorials apply shared objects with each step."""
    objects: dict[ObjectKey, Resource] = {}
    origins: dict[ObjectKey, Origin] = {}
    unknown: dict[tuple[str, str, str], UnknownObject] = {}
    errors: list[LoadError] = []
    warnings: list[LoadError] = []
    for parsed_file in parsed_files:
        for item in parsed_file:
            if isinstance(item, LoadError):
                errors.append(item)
            elif isinstance(item, UnknownObject):
                unknown[(item.kind, item.namespace, item.name)] = item
            else:
                key = item.key
                first = origins.get(key)
                if first is not None and objects[key] != item.obj:  # the same again is a tutorial's re-apply
                    warnings.append(_duplicate(key, first, item.origin))
                objects[key] = item.obj
                origins[key] = item.origin
    return ResourceSet(objects, origins, tuple(unknown.values()), tuple(errors), warnings=tuple(warnings))


def _duplicate(key: ObjectKey, first: Origin, again: Origin) -> LoadError:
    place = f"{first.file} document {first.document}" if first.document else first.file
    reason = f"defined twice, differently: this one replaces the one of {place}, as kubectl apply would"
    reason += " (remove one of them)"
    return LoadError(again, key.kind, key.namespace, key.name, "metadata.name", reason)


def load_texts(sources: Iterable[tuple[str, str]]) -> ResourceSet:
    """(file name, text) pairs, already in apply order, -> a ResourceSet."""
    return combine(parse_text(file, text) for file, text in sources)


def keep_last_good(previous: ResourceSet, current: ResourceSet) -> ResourceSet:
    """`current`, plus the previous version of every object an edit broke, so a bad edit never drops a served object.

    An object whose document now fails validation keeps its previous version; a file that no longer parses keeps
    every previous object of it that did not load again. An object whose document was removed is gone.
    """
    if not current.errors:
        return current  # nothing broke
    kept: dict[ObjectKey, Resource] = dict(current.objects)
    origins: dict[ObjectKey, Origin] = dict(current.origins)
    broken_files = {error.origin.file for error in current.errors if not error.kind}
    broken_objects = [error for error in current.errors if error.kind]

    def broken(key: ObjectKey, origin: Origin) -> bool:
        return origin.file in broken_files or any(
            error.kind == key.kind and error.name == key.name and error.namespace in ("", key.namespace)
            for error in broken_objects
        )

    for key, obj in previous.objects.items():
        origin = previous.origins[key]
        if key not in kept and broken(key, origin):
            kept[key] = obj
            origins[key] = origin
    return ResourceSet(kept, origins, current.unknown, current.errors, warnings=current.warnings)
