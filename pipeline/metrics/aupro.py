"""AUPRO: area under the per-region-overlap (PRO) curve, MVTec AD style.

Reference: Bergmann et al., "The MVTec Anomaly Detection Dataset" (IJCV 2021).
PRO weights every connected defect region equally, so one large defect cannot
dominate the metric the way it dominates pixel AUROC.
"""

from __future__ import annotations

import cv2
import numpy as np

from .pixel import check_masks_maps

__all__ = ["aupro", "pro_curve", "label_regions"]


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected defect regions of every mask with globally unique ids.

    Args:
        masks: ``[N, H, W]`` bool.

    Returns:
        ``(ids, n_regions)`` where ``ids`` is int32 ``[N, H, W]``: 0 for non-defect
        pixels, ``1..n_regions`` for the pixels of each region (over all images).
    """
    ids = np.zeros(masks.shape, dtype=np.int32)
    offset = 0
    for i in range(masks.shape[0]):
        if not masks[i].any():
            continue  # empty mask: only negatives, no region
        n_labels, lab = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
        ids[i] = np.where(lab > 0, lab + offset, 0)
        offset += int(n_labels) - 1  # label 0 is the background
    return ids, offset


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full PRO curve, one point per distinct score threshold.

    Each region pixel contributes ``1 / (region_size * n_regions)`` to PRO and each
    non-defect pixel ``1 / n_negative`` to FPR; sorting all pixels once by score
    (descending) and taking cumulative sums at the last pixel of every group of
    equal scores gives the exact curve at every distinct threshold. Tied pixels
    enter together, so ties give a straight (interpolated) segment.

    Args:
        masks: ``[N, H, W]`` bool; images with empty masks only add negatives.
        maps: ``[N, H, W]`` float.

    Returns:
        ``(fpr, pro)``, float64 ``[K + 1]`` each for K distinct scores, starting at
        ``(0, 0)`` (threshold above every score) and ending at ``(1, 1)``;
        both are non-decreasing.

    Raises:
        ValueError: if there is no defect region, or no non-defect pixel.
    """
    m, a = check_masks_maps(masks, maps)
    ids, n_regions = label_regions(m)
    if n_regions == 0:
        raise ValueError("AUPRO is undefined: no defect region in any mask")
    ids = ids.reshape(-1)
    s = a.reshape(-1)
    neg = ids == 0
    n_neg = int(np.count_nonzero(neg))
    if n_neg == 0:
        raise ValueError("AUPRO is undefined: every pixel is a defect pixel (no false positives possible)")

    sizes = np.bincount(ids, minlength=n_regions + 1).astype(np.float64)
    region_w = np.zeros(n_regions + 1, dtype=np.float64)
    region_w[1:] = 1.0 / (sizes[1:] * n_regions)  # index 0 (background) stays 0

    order = np.argsort(s, kind="stable")[::-1]  # descending score
    s_sorted = s[order]
    ids_sorted = ids[order]
    cum_pro = np.cumsum(region_w[ids_sorted])
    # Integer cumsum for FPR: exact counts, one division.
    cum_fp = np.cumsum(ids_sorted == 0, dtype=np.int64)

    # Last index of each run of equal scores = curve point at that threshold.
    last = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])
    last = np.append(last, s_sorted.size - 1)
    fpr = np.concatenate([[0.0], cum_fp[last] / n_neg])
    pro = np.concatenate([[0.0], np.minimum(cum_pro[last], 1.0)])  # clamp float round-off
    pro[-1] = 1.0  # all pixels flagged: every region fully covered (exact, not round-off)
    return fpr, pro


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to FPR ``fpr_limit``, normalized by ``fpr_limit``.

    As in the MVTec AD paper (Bergmann et al.): regions are the 8-connected
    components of each mask (``cv2.connectedComponents``); PRO at a threshold is
    the mean over all regions (of all images) of the fraction of the region's
    pixels with ``score >= threshold``; FPR is over all pixels outside the masks
    of all images. The curve is exact at every distinct score (see
    :func:`pro_curve`), the PRO value at exactly ``fpr_limit`` is linearly
    interpolated, the area is taken with the trapezoid rule and divided by
    ``fpr_limit`` so that a perfect map gives 1.0 (a random map, PRO ~ FPR,
    gives about ``fpr_limit / 2``, e.g. 0.15 for the default 0.3).

    Args:
        masks: ``[N, H, W]`` bool ground truth; empty masks contribute only negatives.
        maps: ``[N, H, W]`` float anomaly maps, same shape.
        fpr_limit: integration limit in (0, 1].

    Returns:
        Normalized AUPRO in [0, 1].

    Raises:
        ValueError: if there are no regions at all, no negative pixels, or a bad ``fpr_limit``.
    """
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps)

    # Points with fpr <= limit; a vertical run at exactly `limit` is kept whole
    # (it adds no area). fpr[0] == 0 < limit, so k >= 1.
    k = int(np.searchsorted(fpr, limit, side="right"))
    x = fpr[:k]
    y = pro[:k]
    if x[-1] < limit and k < fpr.size:
        # fpr[k] > limit strictly, so the denominator is non-zero.
        t = (limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x = np.append(x, limit)
        y = np.append(y, pro[k - 1] + t * (pro[k] - pro[k - 1]))
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) * 0.5))
    return area / limit
