"""Frame sources of live inspection, one file per kind, and `open_source(spec)` that picks one.

    SRC                          source
    path/to/video.avi            VideoSource (file; its end is a normal end)
    rtsp://... http(s)://...     VideoSource (stream; reopened with backoff when it errors or ends)
    0, 1, ...                    VideoSource (camera index; reopened with backoff)
    folder:PATH                  FolderSource (new image files, name order, stable size, each once)
    linescan:PATH                LineScanSource (a strip image or a folder of line blocks -> overlapping tiles)
    genicam:PRODUCER.cti[#DEV]   GenICamSource (harvesters; optional extra `loupe[genicam]`)
"""
from __future__ import annotations

import threading
from typing import Any

from inference.sources.arrays import ArraySource
from inference.sources.base import Frame, Source, SourceError
from inference.sources.folder import FolderSource
from inference.sources.linescan import LineScanSource, LineTiler, TileConfig
from inference.sources.video import VideoSource

__all__ = ["ArraySource", "Frame", "FolderSource", "LineScanSource", "LineTiler", "Source", "SourceError", "TileConfig", "VideoSource",
           "open_source"]


def open_source(spec: str, *, stop: threading.Event | None = None, tiles: TileConfig | None = None,
                idle_timeout: float | None = None, state: Any = None, **kw: Any) -> Source:
    """A source for a `--source` spec (see the table above).

    idle_timeout: for folder: and linescan: folders, end after that many seconds without
    a new file (None: a folder is watched until stopped; a line-block folder ends after 2 s).
    state: for folder: sources, a file remembering the files already handled (restart continues).
    Other keywords go to the source class (e.g. backoff_initial for streams).
    """
    spec = str(spec).strip()
    if not spec:
        raise SourceError("empty --source; pass a video path, a stream URL, a camera index, folder:PATH or linescan:PATH")
    if spec.startswith("folder:"):
        return FolderSource(spec[len("folder:"):], stop=stop, idle_timeout=idle_timeout, state=state, **kw)
    if spec.startswith("linescan:"):
        return LineScanSource(spec[len("linescan:"):], tiles or TileConfig(), stop=stop,
                              idle_timeout=2.0 if idle_timeout is None else idle_timeout, **kw)
    if spec.startswith("genicam:"):
        from inference.sources.genicam import GenICamSource

        producer, _, device = spec[len("genicam:"):].partition("#")
        return GenICamSource(producer, device or 0, stop=stop, **kw)
    if spec.startswith("cam:"):
        spec = spec[4:]
    return VideoSource(spec, stop=stop, **kw)
