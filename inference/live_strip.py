"""From per-frame results to detections: one per flagged frame, or merged across line-scan tiles.

`FrameReporter`: every flagged frame is one detection (its image and map as they are).

`StripMerger`: line-scan tiles overlap, so a defect near a tile border shows in two (or
more) tiles. Each flagged tile's defect region (the bounding box of its anomaly map >= the
threshold, resized to the tile; the whole tile when no pixel reaches it) is placed in
strip coordinates; a tile whose region overlaps an open detection's region joins it (and
joins detections it bridges). A detection is closed once the scan has moved past it
(the next tile starts after the detection's end along the scan axis, so no later tile
can overlap it) or at the end of the strip, and is reported ONCE: its image is the strip
crop covering all its tiles (stitched from the tiles), its map the pixelwise maximum of
the tiles' maps over that crop, its score the highest tile score, its frame index that
tile's index, its strip position the crop's (y0, y1, x0, x1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

import cv2
import numpy as np

from inference.sources.base import Frame

THRESHOLD = 0.5  # the bundle's normalized threshold


@dataclass
class Detection:
    """Something to store: a flagged frame, or a defect merged over line-scan tiles."""

    image: np.ndarray
    anomaly_map: np.ndarray  # normalized, any size (the store resizes it to the image)
    score: float
    is_defect: bool
    frame_index: int
    captured_at: datetime
    source: str
    model_version: str
    strip: Optional[tuple[int, int, int, int]] = None
    tiles: int = 1
    key: Optional[str] = None  # the frame's stable identity (folder files): makes the record id deterministic


class FrameReporter:
    """Each flagged frame -> one detection."""

    def feed(self, frame: Frame, score: float, anomaly_map: np.ndarray, is_defect: bool, model_version: str) -> list[Detection]:
        if not is_defect:
            return []
        assert frame.image is not None
        return [Detection(frame.image, anomaly_map, score, True, frame.index, frame.captured_at, frame.source, model_version,
                          frame.strip, key=frame.key)]

    def flush(self) -> list[Detection]:
        return []


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


@dataclass
class _Tile:
    frame: Frame
    score: float
    amap: np.ndarray  # at tile resolution
    model_version: str


@dataclass
class _Group:
    region: tuple[int, int, int, int]
    tiles: list[_Tile] = field(default_factory=list)


class StripMerger:
    """Merges flagged line-scan tiles whose defect regions overlap on the strip; reports each defect once."""

    def __init__(self, axis: str = "y", threshold: float = THRESHOLD) -> None:
        if axis not in ("x", "y"):
            raise ValueError(f"scan axis must be x or y, got {axis!r}")
        self.axis, self.threshold = axis, threshold
        self.groups: list[_Group] = []
        self.merged_tiles = 0  # flagged tiles that joined an existing detection

    def _scan(self, box: tuple[int, int, int, int]) -> tuple[int, int]:
        return (box[0], box[1]) if self.axis == "y" else (box[2], box[3])

    def _region(self, tile: _Tile) -> tuple[int, int, int, int]:
        y0, _, x0, _ = tile.frame.strip  # type: ignore[misc]
        ys, xs = np.nonzero(tile.amap >= self.threshold)
        if ys.size == 0:
            return tile.frame.strip  # type: ignore[return-value]
        return (y0 + int(ys.min()), y0 + int(ys.max()) + 1, x0 + int(xs.min()), x0 + int(xs.max()) + 1)

    def feed(self, frame: Frame, score: float, anomaly_map: np.ndarray, is_defect: bool, model_version: str) -> list[Detection]:
        if frame.strip is None:
            raise ValueError("StripMerger needs frames with strip positions (a line-scan source)")
        done = self._close_before(self._scan(frame.strip)[0])
        if not is_defect:
            return done
        assert frame.image is not None
        h, w = frame.image.shape[:2]
        m = np.asarray(anomaly_map, np.float32)
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        tile = _Tile(frame, float(score), m, model_version)
        region = self._region(tile)
        hits = [g for g in self.groups if _overlap(g.region, region)]
        group = _Group(region, [tile])
        for g in hits:
            group.region = _union(group.region, g.region)
            group.tiles = g.tiles + group.tiles
            self.groups.remove(g)
        self.merged_tiles += len(hits) > 0
        self.groups.append(group)
        return done

    def _close_before(self, scan_pos: int) -> list[Detection]:
        closed = [g for g in self.groups if self._scan(g.region)[1] <= scan_pos]
        self.groups = [g for g in self.groups if g not in closed]
        return [self._detection(g) for g in closed]

    def flush(self) -> list[Detection]:
        out = [self._detection(g) for g in self.groups]
        self.groups = []
        return out

    def _detection(self, g: _Group) -> Detection:
        boxes = [t.frame.strip for t in g.tiles]
        y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)  # type: ignore[index]
        x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)  # type: ignore[index]
        first = g.tiles[0].frame.image
        assert first is not None
        image = np.zeros((y1 - y0, x1 - x0, *first.shape[2:]), first.dtype)
        amap = np.zeros((y1 - y0, x1 - x0), np.float32)
        for t in g.tiles:
            ty0, ty1, tx0, tx1 = t.frame.strip  # type: ignore[misc]
            image[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = t.frame.image
            sub = amap[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
            np.maximum(sub, t.amap, out=sub)
        best = max(g.tiles, key=lambda t: t.score)
        return Detection(image, amap, best.score, True, best.frame.index, g.tiles[0].frame.captured_at, best.frame.source,
                         best.model_version, (y0, y1, x0, x1), tiles=len(g.tiles))
