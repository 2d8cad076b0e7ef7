"""A watched folder: new image files, in name order, each read once (`folder:PATH`).

The folder is polled every `poll_interval` seconds. A file is taken only once its size
and mtime have stayed the same for `stable_seconds` (over at least two polls), so a file
still being written by the inspection machine is not read half-way (set stable_seconds
above the longest pause of the writer; writers that rename finished files into place
need none). Files are taken in
name order within a poll and never re-read (names are remembered for the life of the
source while the file exists; a file replaced under the same name is not read again,
one deleted and later written again under its old name is a new file). Hidden files and
temp files (".*", "*.tmp", "*.part") are ignored. Unreadable files become error frames
(counted and logged by the loop).

With a `state` file, a restart continues where the last run stopped: every file the loop
has fully handled (`ack`: inspected and, if flagged, stored) is appended to the state file
(one name per line, flushed at once, fsynced at most once a second: a killed process
loses nothing, a power cut may re-inspect the last second's files), and files listed there
are not read again. The file is compacted on open (names whose files are gone are
dropped; written atomically). Each frame carries `key` = name, size and mtime, which the
loop turns into the record id, so a file re-inspected after a crash between storing its
record and acknowledging it does not get a second record.

With `existing=False`, files already present at start are skipped (only new arrivals);
`idle_timeout` ends the source after that many seconds without a new file (None: watch
forever, until stopped).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from inference.sources.base import Frame, Source, SourceError
from pipeline.atomic import write_text_atomic
from pipeline.data.errors import DataError
from pipeline.data.io import IMAGE_EXTENSIONS, _color_planes, _decode, _to_uint8

log = logging.getLogger("loupe.sources.folder")


def read_frame_file(path: Path) -> "tuple[object, str | None]":
    """(uint8 gray [H, W] or RGB [H, W, 3], None) or (None, why it is unreadable)."""
    import cv2

    try:
        image = _color_planes(_to_uint8(_decode(path, "image"), path, "image"), path, "image")
    except DataError as err:
        return None, str(err)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image, None


class FolderSource(Source):
    """New image files of a folder, in name order, each once."""

    stalls = False  # a quiet folder is normal, not a stalled camera

    def __init__(self, folder: str | Path, *, stop: threading.Event | None = None, poll_interval: float = 0.2,
                 stable_seconds: float = 0.5, existing: bool = True, idle_timeout: float | None = None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS, state: str | Path | None = None) -> None:
        super().__init__(stop)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"folder:{self.folder}: not a folder; pass folder:PATH of the folder the inspection machine writes to")
        self.spec = f"folder:{self.folder}"
        self.live = idle_timeout is None
        self.poll_interval, self.stable_seconds = poll_interval, stable_seconds
        self.existing, self.idle_timeout = existing, idle_timeout
        self.extensions = tuple(e.lower() for e in extensions)
        self.seen: set[str] = set()
        self.state = Path(state) if state is not None else None
        self._state_f: Any = None
        self._last_sync = 0.0
        self._state_lock = threading.Lock()
        if self.state is not None:
            self._open_state()
        self._sizes: dict[str, tuple[tuple[int, int], float]] = {}  # name -> ((size, mtime_ns), first seen so)

    def _open_state(self) -> None:
        assert self.state is not None
        done: list[str] = []
        if self.state.is_file():
            lines = self.state.read_text(errors="replace").split("\n")
            done = [n for n in lines[:-1] if n]  # the last piece is "" or a line cut by a crash
        present = {p.name for p in self.folder.iterdir()}
        keep = [n for n in dict.fromkeys(done) if n in present]
        write_text_atomic(self.state, "".join(f"{n}\n" for n in keep))
        self.seen.update(keep)
        self._state_f = open(self.state, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        if keep:
            log.info("%s: %d file(s) already handled (state %s)", self.spec, len(keep), self.state)

    def ack(self, frame: Frame) -> None:
        if self._state_f is None or frame.name is None:
            return
        with self._state_lock:
            self._state_f.write(frame.name + "\n")
            self._state_f.flush()  # in the OS now: survives kill -9
            if time.monotonic() - self._last_sync >= 1.0:
                os.fsync(self._state_f.fileno())
                self._last_sync = time.monotonic()

    def release(self) -> None:
        """Sync and close the state file (the loop calls it when done)."""
        with self._state_lock:
            if self._state_f is not None:
                self._state_f.flush()
                os.fsync(self._state_f.fileno())
                self._state_f.close()
                self._state_f = None

    def _candidates(self) -> list[Path]:
        out = []
        try:
            entries = list(self.folder.iterdir())
        except OSError as err:
            log.warning("%s: cannot list the folder (%s); retrying", self.spec, err)
            return []
        # forget names that are gone (processed files deleted by the line): `seen` stays as big as the folder
        self.seen.intersection_update(p.name for p in entries)
        for p in entries:
            n = p.name
            if n in self.seen or n.startswith(".") or n.endswith((".tmp", ".part")) or p.suffix.lower() not in self.extensions:
                continue
            out.append(p)
        return out

    def _stable(self, paths: list[Path]) -> list[Path]:
        ready, now = [], time.monotonic()
        for p in paths:
            try:
                st = p.stat()
            except OSError:  # vanished between listing and stat
                self._sizes.pop(p.name, None)
                continue
            key = (st.st_size, st.st_mtime_ns)
            prev = self._sizes.get(p.name)
            if prev is None or prev[0] != key:
                self._sizes[p.name] = (key, now)
            elif now - prev[1] >= self.stable_seconds:
                ready.append(p)
        return sorted(ready, key=lambda p: p.name)

    def frames(self) -> Iterator[Frame]:
        if not self.existing:
            self.seen.update(p.name for p in self._candidates())
        index, last_new = 0, time.monotonic()
        while not self.stop.is_set():
            candidates = self._candidates()
            if candidates:  # files still settling: not idle
                last_new = max(last_new, time.monotonic() - self.poll_interval)
            for path in self._stable(candidates):
                if self.stop.is_set():
                    return
                self.seen.add(path.name)
                self._sizes.pop(path.name, None)
                try:
                    st = path.stat()
                    key: str | None = f"{path.name}\n{st.st_size}\n{st.st_mtime_ns}"
                except OSError:
                    key = None
                image, err = read_frame_file(path)
                yield Frame(index=index, image=image, source=self.spec, error=err, name=path.name, key=key)  # type: ignore[arg-type]
                index += 1
                last_new = time.monotonic()
            if self.idle_timeout is not None and time.monotonic() - last_new >= self.idle_timeout:
                return
            if self.wait(self.poll_interval):
                return
