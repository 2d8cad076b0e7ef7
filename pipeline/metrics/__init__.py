"""Evaluation metrics for Loupe: image-level, pixel-level, AUPRO, reports and plots.

Plot functions live in :mod:`pipeline.metrics.plots` and are re-exported here;
matplotlib itself is only imported when a plot function is called.
"""

from __future__ import annotations

from .aupro import aupro, pro_curve
from .calibration import calibration_outliers, robust_threshold
from .image import calibrate_threshold, f1_max, image_auroc, per_class_auroc, rates_at_threshold
from .pixel import pixel_auroc
from .plots import heatmap_grid, plot_roc
from .report import REPORT_KEYS, evaluate_predictions

__all__ = [
    "image_auroc",
    "f1_max",
    "rates_at_threshold",
    "per_class_auroc",
    "calibrate_threshold",
    "calibration_outliers",
    "robust_threshold",
    "pixel_auroc",
    "aupro",
    "pro_curve",
    "evaluate_predictions",
    "REPORT_KEYS",
    "plot_roc",
    "heatmap_grid",
]
