"""Fit a camera frame to a bundle's input: channels as in training, resized to S x S with OpenCV.

The bundle never resizes (`inference.runtime.as_frames` refuses other shapes), so the
station does it here, the way training loaded images: colour -> gray with OpenCV's
weights (`pipeline.data.io.read_image`), gray -> 3 equal planes for colour bundles,
alpha dropped, 16-bit scaled to 8-bit, then `pipeline.data.tensors.resize_image`
(INTER_AREA when shrinking, INTER_LINEAR when enlarging).

Frames that cannot be fitted (None, zero-size, 2 or more than 4 channels, float data,
more than 3 dimensions) raise `FrameError`; the loop counts them as errors.
"""
from __future__ import annotations

import cv2
import numpy as np

from inference.runtime import FrameError
from pipeline.data.tensors import resize_image


def prepare_frame(image: np.ndarray | None, size: int, channels: int) -> np.ndarray:
    """uint8 [H, W], [H, W, 1], RGB [H, W, 3] or RGBA [H, W, 4] -> uint8 [size, size, channels]."""
    if image is None:
        raise FrameError("no image (the source could not read this frame)")
    a = np.asarray(image)
    if a.ndim not in (2, 3):
        raise FrameError(f"frame has {a.ndim} dimensions (shape {a.shape}); expected [H, W] or [H, W, C]")
    if a.size == 0 or a.shape[0] == 0 or a.shape[1] == 0:
        raise FrameError(f"frame has zero size {a.shape}")
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise FrameError(f"frame has pixel type {a.dtype}; expected uint8 (or uint16) raw pixels")
    if a.ndim == 3:
        c = a.shape[2]
        if c == 1:
            a = a[:, :, 0]
        elif c == 4:
            a = a[:, :, :3]
        elif c != 3:
            raise FrameError(f"frame has {c} channels (shape {a.shape}); expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    if channels == 1:
        if a.ndim == 3:
            a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    elif channels == 3:
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
    else:
        raise FrameError(f"bundles take 1 or 3 channels, this one {channels}")
    out = resize_image(np.ascontiguousarray(a), size)
    return out[:, :, None] if out.ndim == 2 else out
