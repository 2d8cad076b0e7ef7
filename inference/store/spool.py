"""Local spool of store operations while the database is unreachable.

One JSON file per operation (`start_run`, `add_record`, `update_run`, `end_run`),
written atomically (`pipeline.atomic.write_json_atomic`: a crash leaves no partial
file under a final name) and named `<time_ns>-<pid>-<counter>.json`, so sorting the
names gives the order they were written in. Images are already on disk when a record
is spooled; the spool holds only the row. Replay applies the files in order, each in
its own transaction, and deletes a file only after its transaction committed. Every
operation is idempotent (client-side uuid primary keys; inserts skip existing rows;
counts and end times are plain assignments), so a file replayed twice (a crash between
commit and delete) changes nothing the second time.

A `filelock` in the spool folder keeps two processes from replaying at once.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from pipeline.atomic import write_json_atomic

SPOOL_FORMAT = "loupe-spool"
OPS = ("start_run", "add_record", "update_run", "end_run")


class SpoolError(ValueError):
    """A spool file that cannot be read (named in the message)."""


@dataclass(frozen=True)
class SpoolItem:
    """One spooled operation."""

    path: Path
    op: str
    data: dict[str, Any]


class Spool:
    """An ordered folder of pending operations."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.folder / ".replay.lock"))
        self._counter = itertools.count()
        self._last_ns = max((int(p.name.split("-")[0]) for p in self.files() if p.name.split("-")[0].isdigit()), default=0)

    def put(self, op: str, data: dict[str, Any]) -> Path:
        """Append one operation (atomic file write); returns its file."""
        if op not in OPS:
            raise ValueError(f"unknown spool operation {op!r}; expected one of {OPS}")
        self._last_ns = max(time.time_ns(), self._last_ns + 1)  # increasing even if the wall clock steps back
        name = f"{self._last_ns:020d}-{os.getpid():08d}-{next(self._counter):08d}.json"
        return write_json_atomic(self.folder / name, {"format": SPOOL_FORMAT, "op": op, "data": data})

    def files(self) -> list[Path]:
        """Pending files, oldest first (temp files, which start with '.', are not pending)."""
        return sorted(p for p in self.folder.glob("*.json") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.files())

    def items(self) -> Iterator[SpoolItem]:
        """Pending operations, oldest first."""
        for path in self.files():
            yield self.read(path)

    @staticmethod
    def read(path: Path) -> SpoolItem:
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SpoolError(f"spool file {path} is not readable JSON ({err}); move it aside and report it") from err
        if not isinstance(doc, dict) or doc.get("format") != SPOOL_FORMAT or doc.get("op") not in OPS:
            raise SpoolError(f"spool file {path} is not a Loupe spool entry; move it out of {path.parent}")
        return SpoolItem(path, doc["op"], doc["data"])
