"""Frames handed over by the station's own code: any iterable of numpy arrays (or None for a lost frame).

For integrations whose camera SDK is not one of the other sources, and for benchmarks:
`ArraySource(iterable)` yields each item as a `Frame` (RGB or gray uint8 expected; bad
items, e.g. zero-size or wrong channel counts, are counted as errors by the loop).
"""
from __future__ import annotations

import threading
from typing import Iterable, Iterator, Optional

import numpy as np

from inference.sources.base import Frame, Source


class ArraySource(Source):
    """Frames from an iterable of arrays, in order; ends when the iterable does."""

    def __init__(self, frames: Iterable[Optional[np.ndarray]], spec: str = "arrays", *, stop: threading.Event | None = None,
                 live: bool = False) -> None:
        super().__init__(stop)
        self._frames = frames
        self.spec, self.live = spec, live

    def frames(self) -> Iterator[Frame]:
        for i, image in enumerate(self._frames):
            if self.stop.is_set():
                return
            yield Frame(index=i, image=image, source=self.spec, error=None if image is not None else "no image")
