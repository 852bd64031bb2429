"""`combine()` kept from one load to the next, for a source that reloads a few files among many.

Combining is a pass over every object of every file; at 10,000 objects it is a good part of a reload that changed
one file. A `Combiner` remembers its last result and, when only some files changed and none of their objects is
also defined in another file, replaces just those files' objects in a copy of it (a copy made in C). Whatever could
make the order of files matter (an object defined in two files: the later wins, with a warning) takes the full
`combine`. The result also says which keys it changed (`ResourceSet.changed_since`), so that a translation need not
compare every object again to find them.

Exactly what `combine` gives: tests/test_combiner.py compares the two after random sequences of file changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import chain

from translators.loader import LoadError, ObjectKey, Parsed, ResourceSet, UnknownObject, combine

File = tuple[str, tuple[Parsed, ...]]  # a file's name and its parse results, in apply order


class Combiner:
    def __init__(self) -> None:
        self._files: dict[str, tuple[Parsed, ...]] = {}
        self._alone: dict[int, tuple[tuple[Parsed, ...], ResourceSet]] = {}  # by id of the results: each combined
        self._owners: Counter[ObjectKey] = Counter()  # how many files define each key
        self._duplicated = False  # some key is defined in two files
        self._latest: ResourceSet | None = None
        self.full = 0  # loads that took the full combine (for tests)

    def combine(self, files: Sequence[File]) -> ResourceSet:
        current = dict(files)
        found = self._incremental(current)
        if found is None:
            self.full += 1
            found = combine(current.values())
            self._alone = {id(results): (results, self._alone_of(results)) for results in current.values()}
            self._owners = Counter(chain.from_iterable(part.objects.keys() for _, part in self._alone.values()))
            self._duplicated = len(self._owners) < self._owners.total()
        self._files = current
        self._latest = found
        return found

    def _alone_of(self, results: tuple[Parsed, ...]) -> ResourceSet:
        known = self._alone.get(id(results))
        return known[1] if known is not None and known[0] is results else combine([results])

    def _incremental(self, current: dict[str, tuple[Parsed, ...]]) -> ResourceSet | None:
        """The combination from the latest one, or None when only the full combine gives it exactly."""
        latest, previous = self._latest, self._files
        if latest is None or self._duplicated:
            return None  # an object defined twice: which file wins depends on every file's order
        kept = [name for name in previous if current.get(name) is previous[name]]
        if kept != [name for name in current if previous.get(name) is current[name]]:
            return None  # the files kept are in another order
        gone = [self._alone_of(previous[name]) for name in previous if current.get(name) is not previous[name]]
        came = [self._alone_of(current[name]) for name in current if previous.get(name) is not current[name]]
        moves: Counter[ObjectKey] = Counter()
        for part in gone:
            moves.subtract(part.objects.keys())
        for part in came:
            moves.update(part.objects.keys())
        if any(self._owners[key] + move > 1 for key, move in moves.items()):
            return None  # a file now defines an object another one does
        objects, origins = dict(latest.objects), dict(latest.origins)
        for part in gone:
            for key in part.objects:
                del objects[key], origins[key]
        for part in came:
            objects.update(part.objects)
            origins.update(part.origins)
        for key, move in moves.items():
            if self._owners[key] + move:
                self._owners[key] += move
            else:
                del self._owners[key]
        self._alone = {id(results): (results, self._alone_of(results)) for results in current.values()}
        parts = [part for _, part in self._alone.values()]
        unknown: dict[tuple[str, str, str], UnknownObject] = {}
        for part in parts:  # as combine places them: first seen, last kept
            unknown.update(((u.kind, u.namespace, u.name), u) for u in part.unknown)
        errors: list[LoadError] = list(chain.from_iterable(part.errors for part in parts))
        warnings: list[LoadError] = list(chain.from_iterable(part.warnings for part in parts))
        combined = ResourceSet(objects, origins, tuple(unknown.values()), tuple(errors), warnings=tuple(warnings))
        return combined.with_changes(latest, frozenset(moves))
