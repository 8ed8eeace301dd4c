"""Whether the files being served still are what is on disk.

The service serves the copies it verified at start (or at the last reload). When a served file
changes on disk afterwards (a ``dvc repro``, a ``dvc checkout``, or tampering), nothing changes
in what is served; the difference is reported (``/readyz``, ``fraudlab_served_file_changed``,
one log line) until the operator sends SIGHUP, which loads the files again after checking their
hashes against ``dvc.lock``, or restores them. A ``stat`` is compared every few seconds; a file
is hashed only when its ``stat`` moved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fraudlab.integrity.lock import file_md5

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


@dataclass
class _Watched:
    path: Path
    md5: str  # of the copy being served
    signature: tuple[int, int, int, int] | None
    changed: bool = False


class ServedFiles:
    def __init__(
        self, md5s: dict[str, str], *, on_change: Callable[[str, bool], None] | None = None
    ) -> None:
        self.on_change = on_change
        self.files: dict[str, _Watched] = {}
        self.serve(md5s)

    def serve(self, md5s: dict[str, str]) -> None:
        """Watch these copies now (at start, and after a reload)."""
        if self.on_change is not None:  # every file reported, unchanged so far
            for name in {*self.files, *md5s}:
                self.on_change(name, False)
        self.files = {
            name: _Watched(Path(name), md5, _signature(Path(name))) for name, md5 in md5s.items()
        }

    def changed(self) -> list[str]:
        return [name for name, watched in self.files.items() if watched.changed]

    def check(self) -> None:
        """Compare each file with the copy served; report what differs (once per change)."""
        for name, watched in self.files.items():
            signature = _signature(watched.path)
            if signature == watched.signature:
                continue
            watched.signature = signature
            differs = signature is None or _md5_or_none(watched.path) != watched.md5
            if differs == watched.changed:
                continue
            watched.changed = differs
            if differs:
                log.warning(
                    "%s changed on disk (%s); still serving the copy checked at start: send "
                    "SIGHUP to load it once dvc.lock records it",
                    name,
                    "missing" if signature is None else "other content",
                )
            else:
                log.warning("%s is again the copy being served", name)
            if self.on_change is not None:
                self.on_change(name, differs)


def _md5_or_none(path: Path) -> str | None:
    try:
        return file_md5(path)
    except OSError:
        return None
