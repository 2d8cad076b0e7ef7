"""One JSON-serializable evaluation report for a set of predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .aupro import aupro
from .image import _check_labels_scores, f1_max, image_auroc, per_class_auroc, rates_at_threshold
from .pixel import check_masks_maps, pixel_auroc

__all__ = ["evaluate_predictions", "REPORT_KEYS"]

#: The exact keys of :func:`evaluate_predictions`'s result, in order.
REPORT_KEYS: tuple[str, ...] = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "f1_threshold",
    "per_class",
    "per_class_pixel",
    "false_alarm_rate",
    "recall_at_threshold",
    "threshold",
    "n_images",
    "n_good",
    "n_defect",
    "n_masked",
)


def _per_class_pixel(y: np.ndarray, classes: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """{defect class: pixel AUROC over its images plus the good ones}; classes without mask pixels are skipped."""
    out: dict[str, float] = {}
    good = y == 0
    for c in sorted(set(classes[y == 1].tolist())):
        sel = good | ((classes == c) & (y == 1))
        m = masks[sel]
        if m.any() and not m.all():
            out[str(c)] = pixel_auroc(m, maps[sel])
    return out


def evaluate_predictions(
    labels: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    threshold: float,
) -> dict[str, Any]:
    """Evaluate image scores (and optionally anomaly maps) into one report.

    Args:
        labels: ``[N]`` int in {0, 1} (0 = good).
        scores: ``[N]`` float image scores.
        classes: ``[N]`` class name per image (e.g. "good", "scratch").
        masks: ``[N, H, W]`` bool ground-truth masks (all-False for good images), or None.
        maps: ``[N, H, W]`` float anomaly maps at the mask resolution, or None.
        threshold: the deployed decision threshold (flag ``score >= threshold``).

    Returns:
        A JSON-serializable dict with keys exactly :data:`REPORT_KEYS`:

        * ``image_auroc``: float, or None when only one class is present.
        * ``pixel_auroc``, ``aupro``: float over all images (good images add
          negatives) when masks and maps are given and at least one mask is
          non-empty (and not every pixel is defect); else None.
        * ``f1_max``, ``f1_threshold``: best F1 and its threshold, None without defects.
        * ``per_class``: ``{defect class: AUROC vs good}``, None without good images.
        * ``per_class_pixel``: ``{defect class: pixel AUROC over that class's images and
          every good image}`` (which class's maps limit ``pixel_auroc``); a class without
          mask pixels is left out; None when ``pixel_auroc`` is.
        * ``false_alarm_rate``, ``recall_at_threshold``: at ``threshold``; None
          when the respective class is absent.
        * ``threshold``: float; ``n_images``, ``n_good``, ``n_defect``, ``n_masked``
          (images with a non-empty mask): int.

        All numbers are plain Python floats/ints (no numpy types, no NaN).
    """
    y, s = _check_labels_scores(labels, scores)
    n_images = int(y.size)
    n_defect = int(y.sum())
    n_good = n_images - n_defect
    both = n_good > 0 and n_defect > 0

    # Metrics undefined for the data at hand are None rather than an exception:
    # a report over e.g. a good-only batch must still be writable.
    img_auroc = image_auroc(y, s) if both else None
    f1, f1_thr = f1_max(y, s) if n_defect > 0 else (None, None)
    per_class = per_class_auroc(y, s, classes) if n_good > 0 else None
    rates = rates_at_threshold(y, s, threshold)

    pix_auroc: float | None = None
    per_class_pixel: dict[str, float] | None = None
    pro: float | None = None
    n_masked = 0
    if masks is not None:
        m = np.asarray(masks).astype(bool, copy=False)
        if m.ndim != 3 or m.shape[0] != n_images:
            raise ValueError(f"masks must be [N={n_images}, H, W], got shape {m.shape}")
        n_masked = int(m.reshape(n_images, -1).any(axis=1).sum())
        if maps is not None:
            m, a = check_masks_maps(m, maps)
            if n_masked > 0 and not m.all():
                pix_auroc = pixel_auroc(m, a)
                pro = aupro(m, a)
                per_class_pixel = _per_class_pixel(y, np.asarray(classes), m, a)

    return {
        "image_auroc": img_auroc,
        "pixel_auroc": pix_auroc,
        "aupro": pro,
        "f1_max": f1,
        "f1_threshold": f1_thr,
        "per_class": per_class,
        "per_class_pixel": per_class_pixel,
        "false_alarm_rate": rates["false_alarm_rate"],
        "recall_at_threshold": rates["recall"],
        "threshold": float(threshold),
        "n_images": n_images,
        "n_good": n_good,
        "n_defect": n_defect,
        "n_masked": n_masked,
    }
