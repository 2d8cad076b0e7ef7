"""Content-addressed, atomic image files of the results store.

Every image is PNG-encoded in memory, named by the sha256 of its bytes
(`<sha256[:2]>/<sha256>.png`, relative to the image root) and written with
temp file + fsync + rename (`pipeline.atomic.atomic_open`): a crash leaves either
the whole file or no file under the final name (temp files start with "." and end
with ".tmp"). Writing the same content twice is a no-op.

Anomaly maps are stored as uint8 PNGs at frame resolution: value = clip(round(256 * m))
with m the normalized map, so the decision threshold 0.5 sits at 128. The overlay is
the frame with the map as an OpenCV JET heatmap blended on top and the thresholded
region's contour drawn in white.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import atomic_open

#: uint8 value of the decision threshold in stored maps.
THRESHOLD_U8 = 128


class ImagePathError(ValueError):
    """A relative image path that is absolute or escapes the image root."""


def encode_png(image: np.ndarray) -> bytes:
    """uint8 gray [H, W] / [H, W, 1] or RGB [H, W, 3] -> PNG bytes (deterministic for equal arrays)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images to store must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    elif a.ndim == 3 and a.shape[2] == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    elif a.ndim != 2:
        raise ValueError(f"images to store must be [H, W], [H, W, 1] or [H, W, 3], got shape {a.shape}")
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise ValueError(f"could not encode an image of shape {a.shape} as PNG")
    return buf.tobytes()


def content_path(data: bytes) -> str:
    """Relative content-addressed path of encoded bytes: `<sha[:2]>/<sha>.png`."""
    sha = hashlib.sha256(data).hexdigest()
    return f"{sha[:2]}/{sha}.png"


def resolve(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths and anything that escapes `root` (.., symlinks)."""
    rel = Path(relative)
    if rel.is_absolute() or not relative or ".." in rel.parts:
        raise ImagePathError(f"image path {relative!r} is not a path inside the image root {root}")
    base = root.resolve()
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
        raise ImagePathError(f"image path {relative!r} escapes the image root {root}")
    return path


def write_png(root: Path, image: np.ndarray) -> str:
    """Store `image` under `root` content-addressed and atomically; returns its relative path."""
    data = encode_png(image)
    rel = content_path(data)
    path = root / rel
    if not path.is_file():  # same content -> same name: nothing to do
        with atomic_open(path) as f:
            f.write(data)
    return rel


def map_to_uint8(anomaly_map: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Normalized float map -> uint8 (threshold 0.5 -> 128), resized (bilinear) to shape (H, W) if given."""
    m = np.asarray(anomaly_map, np.float32)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if shape is not None and m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.round(m * 256.0), 0, 255).astype(np.uint8)


def overlay(frame: np.ndarray, map_u8: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB overlay: the frame with the map as a JET heatmap blended on, and the >= threshold contour in white."""
    f = np.asarray(frame)
    if f.ndim == 3 and f.shape[2] == 1:
        f = f[:, :, 0]
    rgb = cv2.cvtColor(f, cv2.COLOR_GRAY2RGB) if f.ndim == 2 else f.copy()
    heat = cv2.cvtColor(cv2.applyColorMap(map_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)
    region = (map_u8 >= THRESHOLD_U8).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(f.shape[:2]) // 128))
    return out
