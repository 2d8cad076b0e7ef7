"""Evaluation plots written as PNG files (matplotlib, Agg, no GUI).

matplotlib is imported lazily inside the functions (importing it costs ~0.5 s
and is not needed by scoring code). Figures are built with the object API
(``matplotlib.figure.Figure`` + the Agg canvas) instead of ``pyplot``, so no
global backend is switched and no figure is left registered in pyplot's state.
Every PNG is written atomically: a temporary file in the same folder, then
``os.replace``, so a reader never sees a half-written image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.atomic import atomic_open

from .image import _check_labels_scores, image_auroc

__all__ = ["plot_roc", "heatmap_grid"]


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure bound to an Agg canvas (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig: Any, path: Path | str) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png")
    return Path(path)


def plot_roc(
    labels: np.ndarray,
    scores: np.ndarray,
    path: Path,
    classes: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Write the image-level ROC curve as a PNG, AUROC in the legend.

    Args:
        labels: ``[N]`` int in {0, 1}.
        scores: ``[N]`` float.
        path: PNG destination (parents created).
        classes: optional ``[N]`` class names; when given, one extra curve per
            defect class (good images vs that class) is drawn.
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: if only one class is present.
    """
    from sklearn.metrics import roc_curve

    y, s = _check_labels_scores(labels, scores)
    auc = image_auroc(y, s)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, color="black", lw=2.0, label=f"all defects (AUROC {auc:.3f})")
    if classes is not None:
        cls = np.asarray([str(c) for c in classes], dtype=object)
        if cls.shape != y.shape:
            raise ValueError(f"classes has {cls.shape[0]} entries, expected {y.shape[0]}")
        good = y == 0
        for name in sorted(set(cls[y == 1].tolist())):
            sel = good | ((y == 1) & (cls == name))
            c_auc = image_auroc(y[sel], s[sel])
            c_fpr, c_tpr, _ = roc_curve(y[sel], s[sel])
            ax.plot(c_fpr, c_tpr, lw=1.0, alpha=0.8, label=f"{name} (AUROC {c_auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false-alarm rate (good images flagged)")
    ax.set_ylabel("recall (defect images flagged)")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save_atomic(fig, path)


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert gray ``[H, W]`` / ``[H, W, 1]`` / RGB ``[H, W, 3]`` / RGBA to uint8 RGB ``[H, W, 3]``.

    Float images are assumed to be in [0, 1] when their max is <= 1, else in [0, 255].
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"image must be [H, W] or [H, W, 3], got shape {img.shape}")
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        if f.size and np.nanmax(f) <= 1.0:
            f = f * 255.0
        img = np.clip(np.nan_to_num(f), 0, 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img)


def _resize(arr: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize a 2-D array to ``hw`` = (H, W); nearest for masks, bilinear for maps."""
    if arr.shape[:2] == hw:
        return arr
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(arr, (hw[1], hw[0]), interpolation=interp)


def _outline(rgb: np.ndarray, region: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    """Draw the outline of bool ``region`` [H, W] onto uint8 ``rgb`` [H, W, 3] in place."""
    if not region.any():
        return
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, color, thickness)


def heatmap_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    scores: Sequence[float],
    labels: Sequence[int],
    path: Path,
    threshold: float = 0.5,
    titles: Sequence[str] | None = None,
    max_items: int = 16,
    alpha: float = 0.45,
) -> Path:
    """Write a PNG grid of images with their anomaly maps overlaid.

    Per item: the image (uint8 gray ``[H, W]`` or RGB ``[H, W, 3]``) blended with
    the anomaly map (float ``[h, w]``, any size, resized bilinearly to the image)
    rendered with the inferno colormap. The map is scaled by ``0.5 / threshold``
    so the threshold sits at 0.5 of a fixed 0..1 color scale (clipped), making
    colors comparable across items and runs. The ground-truth mask outline
    (``[h, w]``, any size, resized nearest) is drawn in green and the predicted
    region outline (``map >= threshold``) in red. The title shows the optional
    title (e.g. class), the score and the label.

    Args:
        images: per-item image arrays.
        maps: per-item float anomaly maps (same units as ``threshold``).
        masks: per-item bool masks, or None for items without ground truth.
        scores: per-item image scores.
        labels: per-item labels, 0 good / 1 defect.
        path: PNG destination (parents created).
        threshold: pixel threshold on the map, > 0.
        titles: optional per-item title prefix.
        max_items: only the first ``max_items`` items are drawn.
        alpha: opacity of the heatmap overlay.

    Returns:
        ``path``.

    Raises:
        ValueError: on inconsistent lengths, no items, or ``threshold <= 0``.
    """
    from matplotlib import colormaps

    n = len(images)
    lengths = {"maps": len(maps), "masks": len(masks), "scores": len(scores), "labels": len(labels)}
    if titles is not None:
        lengths["titles"] = len(titles)
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise ValueError(f"heatmap_grid: {n} images but lengths {bad}")
    if n == 0:
        raise ValueError("heatmap_grid: no items to draw")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (it is mapped to 0.5 of the color scale), got {threshold}")
    n = min(n, int(max_items))
    cmap = colormaps["inferno"]

    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(3.2 * cols, 3.4 * rows)
    for i in range(n):
        rgb = _to_rgb_uint8(images[i])
        hw = (rgb.shape[0], rgb.shape[1])
        amap = np.asarray(maps[i], dtype=np.float32)
        if amap.ndim != 2:
            raise ValueError(f"map {i} must be [H, W], got shape {amap.shape}")
        amap = _resize(np.nan_to_num(amap), hw, nearest=False)
        heat = np.clip(amap * (0.5 / float(threshold)), 0.0, 1.0)
        heat_rgb = (cmap(heat)[..., :3] * 255.0).astype(np.float32)
        over = ((1.0 - alpha) * rgb.astype(np.float32) + alpha * heat_rgb).round().astype(np.uint8)

        thick = max(1, round(min(hw) / 128))  # visible outlines on large images too
        mask = masks[i]
        if mask is not None:
            m = _resize(np.asarray(mask).astype(np.uint8), hw, nearest=True).astype(bool)
            _outline(over, m, (0, 255, 0), thick)
        _outline(over, amap >= threshold, (255, 0, 0), thick)

        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(over, interpolation="nearest")
        ax.set_axis_off()
        head = f"{titles[i]} | " if titles is not None else ""
        kind = "defect" if int(labels[i]) == 1 else "good"
        ax.set_title(f"{head}score {float(scores[i]):.3f} | {kind}", fontsize=8)
    fig.suptitle("green: ground truth, red: map >= threshold", fontsize=8)
    fig.tight_layout()
    return _save_atomic(fig, path)
