"""Line-scan source (`linescan:PATH`): line blocks assembled into overlapping tiles with strip coordinates.

A line-scan camera delivers the product as a stream of lines, usually in blocks of a few
dozen lines. `LineTiler` buffers blocks and cuts square-ish tiles for the model:

* along the scan: `tile_height` lines, consecutive tiles overlapping by `overlap` lines
  (stride = tile_height - overlap); the last tile is aligned to the end of the strip so
  every line is covered;
* across the sensor: tiles of `width` pixels (default: the whole sensor width),
  overlapping by `overlap` as well when the sensor is wider than a tile, the last one
  aligned to the sensor's edge.

Every tile carries its position on the strip, `(y0, y1, x0, x1)` in the coordinates of
the input (image rows and columns). `inference.live_strip.StripMerger` maps flagged
tiles' defect regions back to the strip and reports a defect that crosses a tile border
once.

PATH is either one strip image (fed to the tiler in blocks of `block_lines` lines, as a
camera would deliver it) or a folder of line-block images (`FolderSource`: taken in name
order, each once; with `idle_timeout` None the folder is watched for new blocks).
`axis` says which image axis is the scan direction: "y" (lines are rows), "x" (lines are
columns: the strip is transposed for tiling and tiles are transposed back, so the model
sees them in the input's orientation), or "auto": the longer axis of a strip image;
rows for block folders.

A strip shorter than one tile gives one tile of its length (the loop resizes every tile
to the bundle's input size). An unreadable block, or a block whose width differs from
the first one, becomes an error frame and is skipped (later strip coordinates then do
not include its lines; the error is logged).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from inference.sources.base import Frame, Source, SourceError
from inference.sources.folder import FolderSource, read_frame_file

log = logging.getLogger("loupe.sources.linescan")


@dataclass(frozen=True)
class TileConfig:
    """Tiling of a line-scan strip (all in pixels; None: derived, see the module docstring)."""

    tile_height: int | None = None  # along the scan; default: the tile width (square tiles)
    overlap: int | None = None  # between consecutive tiles; default: tile_height // 4
    width: int | None = None  # across the sensor; default: the whole sensor width
    axis: str = "auto"  # "y", "x" or "auto"
    block_lines: int = 64  # lines per block when a strip image is streamed

    def resolved(self, sensor_width: int) -> tuple[int, int, int]:
        """(tile_height, overlap, tile_width) for a sensor `sensor_width` pixels wide."""
        tw = min(int(self.width or sensor_width), sensor_width)
        th = int(self.tile_height or tw)
        ov = int(self.overlap if self.overlap is not None else th // 4)
        if th < 1 or tw < 1:
            raise SourceError(f"line-scan tiles must be at least 1x1 pixels, got {th}x{tw}")
        if not 0 <= ov < th or (tw < sensor_width and ov >= tw):
            raise SourceError(f"line-scan overlap {ov} must be >= 0 and smaller than the tile ({th}x{tw})")
        return th, ov, tw


def _starts(total: int, size: int, stride: int) -> list[int]:
    """Window starts covering [0, total) with windows of `size`, the last aligned to the end."""
    if total <= size:
        return [0]
    starts = list(range(0, total - size + 1, stride))
    if starts[-1] + size < total:
        starts.append(total - size)
    return starts


class LineTiler:
    """Buffers line blocks [n, W(, C)] (scan along axis 0) and cuts overlapping tiles in scan coordinates."""

    def __init__(self, cfg: TileConfig, sensor_width: int) -> None:
        self.sensor_width = sensor_width
        self.th, self.ov, self.tw = cfg.resolved(sensor_width)
        self.stride = self.th - self.ov
        self.x_starts = _starts(sensor_width, self.tw, max(1, self.tw - self.ov))
        self._buf: np.ndarray | None = None
        self._buf_y0 = 0  # scan coordinate of the buffer's first line
        self._next_y = 0  # scan coordinate of the next tile's first line
        self._lines = 0  # lines received so far
        self._emitted_to = 0  # scan end of the last tile row cut

    def _cut(self, y0: int, y1: int) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
        assert self._buf is not None
        rows = self._buf[y0 - self._buf_y0 : y1 - self._buf_y0]
        self._emitted_to = max(self._emitted_to, y1)
        return [(np.ascontiguousarray(rows[:, x0 : x0 + self.tw]), (y0, y1, x0, x0 + self.tw)) for x0 in self.x_starts]

    def push(self, block: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
        """Add a block of lines; returns the tiles (scan-space image, (y0, y1, x0, x1)) now complete."""
        if block.shape[1] != self.sensor_width:
            raise ValueError(f"line block is {block.shape[1]} pixels wide, the strip is {self.sensor_width}")
        self._buf = block if self._buf is None else np.concatenate([self._buf, block])
        self._lines += block.shape[0]
        out = []
        while self._next_y + self.th <= self._lines:
            out += self._cut(self._next_y, self._next_y + self.th)
            self._next_y += self.stride
        keep_from = min(self._next_y, max(self._lines - self.th, 0))  # lines an end-aligned last tile may still need
        if keep_from > self._buf_y0:
            self._buf = self._buf[keep_from - self._buf_y0 :]
            self._buf_y0 = keep_from
        return out

    def finish(self) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
        """Tiles for the tail of the strip (the last tile aligned to its end)."""
        if self._buf is None or self._lines <= self._emitted_to:
            return []
        y0 = max(self._lines - self.th, 0)
        return self._cut(y0, self._lines)


class LineScanSource(Source):
    """Tiles of a line-scan strip image or of a folder of line blocks (`linescan:PATH`)."""

    stalls = False  # a quiet block folder is normal

    def __init__(self, path: str | Path, cfg: TileConfig = TileConfig(), *, stop: threading.Event | None = None,
                 idle_timeout: float | None = 2.0, poll_interval: float = 0.2) -> None:
        super().__init__(stop)
        self.path = Path(path)
        self.cfg = cfg
        self.spec = f"linescan:{self.path}"
        if cfg.axis not in ("auto", "x", "y"):
            raise SourceError(f"line-scan axis must be auto, x or y, got {cfg.axis!r}")
        if self.path.is_file():
            self.kind = "strip"
        elif self.path.is_dir():
            self.kind = "blocks"
        else:
            raise SourceError(f"{self.spec}: {self.path} is neither a strip image nor a folder of line blocks")
        self.idle_timeout, self.poll_interval = idle_timeout, poll_interval
        self.live = self.kind == "blocks" and idle_timeout is None
        self.axis = cfg.axis if cfg.axis != "auto" else "y"
        self.tiler: LineTiler | None = None
        self._strip: np.ndarray | None = None
        if self.kind == "strip":  # read now: a bad file is an error at open, and "auto" knows its axis
            image, err = read_frame_file(self.path)
            if image is None:
                raise SourceError(f"{self.spec}: {err}")
            assert isinstance(image, np.ndarray)
            if cfg.axis == "auto":
                self.axis = "x" if image.shape[1] > image.shape[0] else "y"
            self._strip = image

    def _blocks(self) -> Iterator[tuple[np.ndarray | None, str | None]]:
        """(scan-space block, None) or (None, error) in order."""
        if self.kind == "strip":
            image, self._strip = self._strip, None  # the source is read once
            if image is None:
                return
            if self.axis == "x":
                image = np.ascontiguousarray(np.swapaxes(image, 0, 1))
            n = max(1, int(self.cfg.block_lines))
            for y in range(0, image.shape[0], n):
                if self.stop.is_set():
                    return
                yield image[y : y + n], None
            return
        folder = FolderSource(self.path, stop=self.stop, idle_timeout=self.idle_timeout, poll_interval=self.poll_interval)
        for f in folder.frames():
            if f.image is None:
                yield None, f"line block {f.name}: {f.error}"
                continue
            block = f.image
            yield (np.ascontiguousarray(np.swapaxes(block, 0, 1)) if self.axis == "x" else block), None

    def _to_frame(self, index: int, tile: np.ndarray, pos: tuple[int, int, int, int]) -> Frame:
        y0, y1, x0, x1 = pos
        if self.axis == "x":  # back to the input's orientation
            return Frame(index=index, image=np.ascontiguousarray(np.swapaxes(tile, 0, 1)), source=self.spec, strip=(x0, x1, y0, y1))
        return Frame(index=index, image=tile, source=self.spec, strip=(y0, y1, x0, x1))

    def frames(self) -> Iterator[Frame]:
        index = 0
        for block, err in self._blocks():
            if block is None:
                yield Frame(index=index, image=None, source=self.spec, error=err)
                index += 1
                continue
            if self.tiler is None:
                self.tiler = LineTiler(self.cfg, block.shape[1])
            try:
                tiles = self.tiler.push(block)
            except ValueError as e:
                yield Frame(index=index, image=None, source=self.spec, error=f"{self.spec}: {e}; block skipped")
                index += 1
                continue
            for tile, pos in tiles:
                yield self._to_frame(index, tile, pos)
                index += 1
        if self.tiler is not None and not self.stop.is_set():
            for tile, pos in self.tiler.finish():
                yield self._to_frame(index, tile, pos)
                index += 1
