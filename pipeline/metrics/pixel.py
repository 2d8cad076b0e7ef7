"""Pixel-level metrics over anomaly maps and ground-truth defect masks.

* ``masks``: bool array ``[N, H, W]`` (non-zero = defect pixel).
* ``maps``:  float array ``[N, H, W]``, same shape; higher = more anomalous.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["pixel_auroc", "MAX_AUROC_PIXELS", "check_masks_maps"]

#: Above this many pixels ``pixel_auroc`` subsamples (sorting 50M scores is the
#: practical memory/time ceiling for sklearn's ROC on a worker).
MAX_AUROC_PIXELS: int = 50_000_000


def check_masks_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a mask/map pair.

    Args:
        masks: ``[N, H, W]`` (or a single ``[H, W]``) bool-like.
        maps: same shape, float.

    Returns:
        ``(masks bool [N, H, W], maps float [N, H, W])``; float32/float64 maps keep their dtype.

    Raises:
        ValueError: on shape mismatch, wrong rank or non-finite map values.
    """
    m = np.asarray(masks)
    a = np.asarray(maps)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if m.ndim == 2:
        m = m[None]
    if a.ndim == 2:
        a = a[None]
    if m.ndim != 3 or a.ndim != 3:
        raise ValueError(f"masks and maps must be [N, H, W], got shapes {m.shape} and {a.shape}")
    if m.shape != a.shape:
        raise ValueError(f"masks and maps differ in shape: {m.shape} vs {a.shape}; resize maps to the mask size first")
    if not np.isfinite(a).all():
        raise ValueError("anomaly maps contain NaN or infinite values")
    return m.astype(bool, copy=False), a


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over all pixels of all images (defect pixels vs non-defect pixels).

    When there are more than ``MAX_AUROC_PIXELS`` pixels, each class (defect /
    non-defect pixels) is subsampled with the same fixed stride
    ``ceil(total / MAX_AUROC_PIXELS)`` over its pixels in C order. This is
    deterministic, and because AUROC only depends on the two class-conditional
    score distributions, per-class subsampling estimates it without bias and
    never drops a rare class entirely (every class keeps its first pixel).

    Args:
        masks: ``[N, H, W]`` bool ground-truth defect masks.
        maps: ``[N, H, W]`` float anomaly maps.

    Returns:
        Pixel AUROC as a fraction in [0, 1].

    Raises:
        ValueError: if no pixel, or every pixel, is a defect pixel.
    """
    m, a = check_masks_maps(masks, maps)
    y = m.reshape(-1)
    s = a.reshape(-1)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"pixel AUROC needs both defect and non-defect pixels; got {n_pos} defect of {y.size} pixels"
        )
    if y.size > MAX_AUROC_PIXELS:
        stride = math.ceil(y.size / MAX_AUROC_PIXELS)
        pos = s[y][::stride]
        neg = s[~y][::stride]
        s = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    return float(roc_auc_score(y, s))
