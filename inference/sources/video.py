"""OpenCV `VideoCapture` sources: video files, RTSP/HTTP(S) stream URLs, camera indices.

A video file that ends is a normal end. A stream or camera that fails to open, errors,
or ends is *not*: the capture is released and reopened with exponential backoff
(`backoff_initial` doubling up to `backoff_max` seconds, reset after the next good
frame), every attempt logged; after `max_reopens` consecutive failed attempts (None:
never give up) the source ends with an error logged. Frame indices keep counting
across reopens. Frames come out as RGB uint8 [H, W, 3] (OpenCV decodes to BGR).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator

import cv2

from inference.sources.base import Frame, Source, SourceError

log = logging.getLogger("loupe.sources.video")

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


def is_stream_url(spec: str) -> bool:
    return spec.lower().startswith(STREAM_SCHEMES)


class VideoSource(Source):
    """Frames of a video file, a stream URL, or a camera (an int index or "cam:N")."""

    def __init__(self, spec: str | int | Path, *, stop: threading.Event | None = None, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, max_reopens: int | None = None, live: bool | None = None,
                 api_preference: int = cv2.CAP_ANY) -> None:
        super().__init__(stop)
        self.spec = str(spec)
        if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
            self.target: str | int = int(spec)
            self.kind = "camera"
        elif isinstance(spec, str) and is_stream_url(spec):
            self.target, self.kind = spec, "stream"
        else:
            path = Path(spec)
            if not path.is_file():
                raise SourceError(f"video file {path} does not exist; pass a video file, a stream URL (rtsp://, http://), "
                                  "a camera index, folder:PATH or linescan:PATH")
            self.target, self.kind = str(path), "file"
        self.live = self.kind != "file" if live is None else live
        self.backoff_initial, self.backoff_max, self.max_reopens = backoff_initial, backoff_max, max_reopens
        self.api_preference = api_preference
        self.cap: cv2.VideoCapture | None = None
        self.errors = 0  # read failures of live sources (each followed by a reopen)

    def _open(self) -> bool:
        cap = cv2.VideoCapture(self.target, self.api_preference)
        if not cap.isOpened():
            cap.release()
            return False
        self.cap = cap
        return True

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _reopen(self, why: str) -> bool:
        """Reopen with backoff until it works, the source is stopped, or max_reopens is reached."""
        self._release()
        delay, attempt = self.backoff_initial, 0
        while not self.stop.is_set():
            attempt += 1
            if self.max_reopens is not None and attempt > self.max_reopens:
                log.error("%s %s: giving up after %d reopen attempts (%s)", self.kind, self.spec, self.max_reopens, why)
                return False
            log.warning("%s %s: %s; reopening in %.2f s (attempt %d)", self.kind, self.spec, why, delay, attempt)
            if self.wait(delay):
                return False
            if self._open():
                self.reopens += 1
                log.warning("%s %s: reopened after %d attempt(s)", self.kind, self.spec, attempt)
                return True
            why = "could not open it"
            delay = min(delay * 2, self.backoff_max)
        return False

    def frames(self) -> Iterator[Frame]:
        if not self._open():
            if not self.live:
                raise SourceError(f"cannot open video file {self.spec} with OpenCV (unsupported codec or damaged file); "
                                  "re-encode it (e.g. ffmpeg -i IN -c:v ffv1 OUT.avi) or pass another source")
            if not self._reopen("could not open it"):
                return
        index = 0
        try:
            while not self.stop.is_set():
                assert self.cap is not None
                ok, bgr = self.cap.read()
                if not ok or bgr is None:
                    if not self.live:
                        return  # end of the file
                    self.errors += 1
                    if not self._reopen("read failed or the stream ended"):
                        return
                    continue
                if bgr.ndim == 3 and bgr.shape[2] == 3:
                    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                elif bgr.ndim == 3 and bgr.shape[2] == 4:
                    image = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
                else:
                    image = bgr
                yield Frame(index=index, image=image, source=self.spec)
                index += 1
        finally:
            self._release()

    def close(self) -> None:
        self.stop.set()
