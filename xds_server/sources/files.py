"""Manifest files: reading them (like `kubectl apply -f`), and watching them: every change (debounced) reloads them
all, keeping the last good version of what broke."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import watchfiles

from translators.combiner import Combiner
from translators.loader import LoadError, Origin, Parsed, ResourceSet, combine, keep_last_good, parse_text

log = logging.getLogger(__name__)

# A burst of file events is published STEP_MS after its last event (an editor's save is several events within a
# millisecond or two), and at most DEBOUNCE_MS after its first however many keep coming. The watcher checks for
# events every STEP_MS: smaller would wake it (and take the GIL) more often while nothing happens.
DEBOUNCE_MS = 50
STEP_MS = 5
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def manifest_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named on the command line, plus each directory's manifests in name order (like `kubectl -f DIR`)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES))
        else:
            files.append(path)
    return files


def parse_file(file: Path) -> tuple[Parsed, ...]:
    """Reads and parses one file; a file that cannot be read is one error."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return (LoadError(Origin(str(file), 0), "", "", "", "", "no such file or directory"),)
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte {exc.start}): a manifest is YAML or JSON"
        return (LoadError(Origin(str(file), 0), "", "", "", "", reason),)
    except OSError as exc:
        return (LoadError(Origin(str(file), 0), "", "", "", "", f"cannot read file: {exc.strerror or exc}"),)
    return parse_text(str(file), text)


def load_paths(paths: Sequence[str | Path]) -> ResourceSet:
    """Reads files and directories; a file that cannot be read becomes an error, the rest still load."""
    return combine(parse_file(file) for file in manifest_files(paths))


class FileSource:
    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self.loaded = ResourceSet()
        # Parsing is most of a reload: a file whose modification time and size did not change is not read again.
        self._parsed: dict[Path, tuple[tuple[int, int], tuple[Parsed, ...]]] = {}
        self._combiner = Combiner()  # a reload combines again only the objects of the files that changed

    def load(self) -> ResourceSet:
        """Loads every path (blocking I/O and parsing: run it in a thread)."""
        parsed: dict[Path, tuple[tuple[int, int], tuple[Parsed, ...]]] = {}
        for file in manifest_files(self.paths):
            try:
                stat = file.stat()
            except OSError:
                parsed[file] = ((0, 0), parse_file(file))  # reports it as unreadable
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._parsed.get(file)
            parsed[file] = cached if cached is not None and cached[0] == stamp else (stamp, parse_file(file))
        self._parsed = parsed
        combined = self._combiner.combine([(str(file), results) for file, (_, results) in parsed.items()])
        self.loaded = keep_last_good(self.loaded, combined)
        return self.loaded

    def _relevant(self, _change: watchfiles.Change, path: str) -> bool:
        # Editors write temporary files next to the manifest; only manifests, and the named paths, matter.
        return Path(path).suffix in MANIFEST_SUFFIXES or Path(path) in self.paths

    async def watch(self, on_load: Callable[[ResourceSet], Awaitable[None]], stop: asyncio.Event) -> None:
        """Calls `on_load` after every burst of changes, until `stop` is set."""
        watched = [p if p.is_dir() else p.parent for p in self.paths]
        async for changes in watchfiles.awatch(
            *watched, watch_filter=self._relevant, debounce=DEBOUNCE_MS, step=STEP_MS, stop_event=stop, recursive=False
        ):
            log.info("reloading after %d file change(s)", len(changes))
            await on_load(await asyncio.to_thread(self.load))
