"""What every frame source yields: `Frame`s, in order, from a reader thread.

A source is an iterable of `Frame`s with `close()`. Frames carry raw pixels as the
camera or file gives them (uint8 gray [H, W] or RGB [H, W, 3]; OpenCV's BGR is
converted at the source), never resized: fitting a frame to the bundle's input
(`inference.live_prepare.prepare_frame`) is the loop's job. A frame the source could
not read is yielded with `image=None` and `error` set, so the loop counts and logs it
instead of stopping.

After the loop has fully handled a frame it calls `source.ack(frame)` (resumable sources
remember it). `stop` (a `threading.Event`) asks a source to end early; sources check it between
frames and during waits (backoff, polling), so a stop never waits for a long sleep.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Optional

import numpy as np

from inference.store.models import utcnow


class SourceError(ValueError):
    """A source that cannot be opened at all (bad path, unknown spec); names the source and the fix."""


@dataclass
class Frame:
    """One frame (or line-scan tile) from a source."""

    index: int  # position in the source: frame number, file number, tile number
    image: Optional[np.ndarray]  # uint8 [H, W] or [H, W, 3] RGB; None when unreadable (see error)
    source: str
    captured_at: datetime = field(default_factory=utcnow)
    strip: Optional[tuple[int, int, int, int]] = None  # (y0, y1, x0, x1) on a line-scan strip
    error: Optional[str] = None  # why the frame is unusable (unreadable file, ...)
    name: Optional[str] = None  # file name for folder sources
    key: Optional[str] = None  # stable identity across restarts (folder files: name, size, mtime), or None


class Source:
    """Base class of frame sources."""

    #: Human-readable spec of the source (what `--source` said).
    spec: str = ""
    #: True for sources that never end by themselves (streams, cameras, watched folders).
    live: bool = False

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        #: Times the source was reopened after an error (streams, cameras).
        self.reopens = 0

    def frames(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def ack(self, frame: Frame) -> None:
        """The loop is done with `frame` (inspected and, if flagged, stored; or counted as error/dropped).

        Sources that can resume after a restart (a folder with a state file) remember it here.
        Called from the loop's threads, in frame order.
        """

    def release(self) -> None:
        """Flush and close what the source keeps besides the device (e.g. a state file); called once at the end."""

    def close(self) -> None:
        """Ask the source to end (it releases its device/file when its generator finishes); safe to call twice."""
        self.stop.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds` unless stopped; True when a stop was requested."""
        return self.stop.wait(seconds)
