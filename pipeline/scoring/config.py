"""Scorer configuration (PatchCore-style patch nearest-neighbour scoring)."""
from __future__ import annotations

from dataclasses import dataclass

SCORE_REDUCTIONS = ("max", "topk")
PROJECTIONS = ("group", "pca", "whiten")  # see projection.py
CALIBRATIONS = ("holdout", "leave_one_out")  # see fit.py and leave_one_out.py
TRIM_SCORES = ("cross_fit", "leave_one_out")  # see denoise.py


@dataclass
class ScorerConfig:
    image_size: int = 256  # frames are resized to this square size inside the model
    agg_kernel: int = 3  # local neighbourhood averaging of patch features (PatchCore)
    agg_zero_pad: bool = False  # True: border averages count the zero padding, as PatchCore does (see patch_features.py)
    feature_dim: int | None = None  # patch feature dims after `projection`; None keeps all channels
    projection: str = "group"  # group: average adjacent channels; pca / whiten: learnt on the bank images (projection.py)
    tap_weights: list[float] | None = None  # scale of each encoder tap's features (patch_features.py); None: all 1
    grid_tap: int = 0  # patches live on this tap's grid (0: the finest); finer taps are average-pooled onto it
    coreset_ratio: float = 0.01  # fraction of training patches kept in the memory bank
    max_bank: int = 16384  # upper bound on memory-bank rows (latency and memory)
    coreset_proj_dim: int = 64  # random projection used only to *select* the coreset
    coreset_chunk: int = 100_000  # greedy k-center runs per chunk of this many patches
    coreset_refine: float = 1.0  # >1: chunks keep refine x bank size, then one global pass (see coreset.py)
    trim_fraction: float = 0.0  # drop this share of bank images with the highest cross-fitted image score (denoise.py); 0: off
    trim_rounds: int = 1  # >1: re-score against the images the previous round kept, so defects of one kind stop vouching for each other
    trim_fence: float = 0.0  # >0: of that share, drop only images above Q3 + fence * IQR of the log image scores; 0: the whole share
    trim_score: str = "cross_fit"  # rank images by a half-size cross-fitted bank (cross_fit) or as calibration scores them (leave_one_out)
    denoise_fraction: float = 0.0  # drop this share of training patches farthest from the other images' (denoise.py); 0: off
    min_support: int = 1  # drop bank rows nearest to patches of fewer distinct training images (support.py); 1: off
    knn_chunk: int = 4096  # memory-bank rows per matmul in the nearest-neighbour search
    blur_sigma: float = 4.0  # Gaussian smoothing of the upsampled map, in pixels
    score_reduce: str = "max"  # image score = map max, or mean of the top `topk_fraction` pixels
    topk_fraction: float = 0.01
    # holdout: holdout_fraction of the good training images stay out of the bank and calibrate the threshold;
    # leave_one_out: every image feeds the bank, and up to calibration_images of them are scored against the
    # bank less their own rows (leave_one_out.py)
    calibration: str = "holdout"
    holdout_fraction: float = 0.1  # good training images held out of the bank to calibrate the threshold (holdout)
    calibration_images: int = 300  # leave_one_out: images scored for the threshold (a seeded sample; <= 0: all)
    target_false_alarm_rate: float = 0.01
    calibration_fence: float = 0.0  # >0: held-out scores above Q3 + fence * IQR of their logs (likely defective) skip the threshold quantile (metrics/calibration.py); 0: off
    seed: int = 0

    def __post_init__(self) -> None:
        if self.score_reduce not in SCORE_REDUCTIONS:
            raise ValueError(f"score_reduce must be one of {SCORE_REDUCTIONS}, got {self.score_reduce!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.projection != "group" and self.feature_dim is None:
            raise ValueError(f"projection {self.projection!r} needs feature_dim (the number of principal directions kept)")
        if not 0 <= self.trim_fraction < 1:
            raise ValueError(f"trim_fraction must be in [0, 1), got {self.trim_fraction}")
        if self.trim_score not in TRIM_SCORES:
            raise ValueError(f"trim_score must be one of {TRIM_SCORES}, got {self.trim_score!r}")
        if self.trim_rounds < 1:
            raise ValueError(f"trim_rounds must be >= 1 (1: one cross-fitted pass), got {self.trim_rounds}")
        if self.trim_fence < 0:
            raise ValueError(f"trim_fence must be >= 0 (0 drops the whole trim_fraction), got {self.trim_fence}")
        if not 0 <= self.denoise_fraction < 1:
            raise ValueError(f"denoise_fraction must be in [0, 1), got {self.denoise_fraction}")
        if self.calibration_fence < 0:
            raise ValueError(f"calibration_fence must be >= 0 (0 calibrates on every held-out image), got {self.calibration_fence}")
        if self.tap_weights is not None and any(not w > 0 for w in self.tap_weights):
            raise ValueError(f"tap_weights must all be > 0 (one per encoder tap), got {self.tap_weights}")
        if self.min_support < 1:
            raise ValueError(f"min_support must be >= 1 (1 keeps every bank row), got {self.min_support}")
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
