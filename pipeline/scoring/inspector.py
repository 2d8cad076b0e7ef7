"""The inspector: pre-processing, encoder, patch scorer and map post-processing in
one forward. This module *is* the model that every runtime runs (PyTorch, ONNX
Runtime, TensorRT), so threshold and normalization live in it as buffers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.encoder import Encoder
from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.gaussian import GaussianBlur
from pipeline.scoring.knn import nearest_distance
from pipeline.scoring.patch_features import PatchFeatures


class InspectorOutput(NamedTuple):
    score: torch.Tensor  # [N] float, normalized: the threshold sits at 0.5
    anomaly_map: torch.Tensor  # [N, S, S] float, same normalization
    is_defect: torch.Tensor  # [N] bool, raw score >= calibrated threshold (score >= 0.5 up to rounding)


class Inspector(nn.Module):
    """uint8 frames [N, H, W, C] -> (score [N], anomaly_map [N, S, S], is_defect [N]).

    Frames of any H, W are resized to S = `cfg.image_size` (bilinear; the identity
    when already S x S). C must equal the encoder's `in_channels`.
    """

    def __init__(self, encoder: Encoder, cfg: ScorerConfig, bank_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        grouped_dim = cfg.feature_dim if cfg.projection == "group" else None
        self.patches = PatchFeatures(encoder.tap_channels, cfg.agg_kernel, grouped_dim, cfg.grid_tap, cfg.agg_zero_pad,
                                     cfg.tap_weights)
        self.blur = GaussianBlur(cfg.blur_sigma)
        d = self.patches.dim
        self.learnt_projection = cfg.projection != "group"
        if self.learnt_projection:  # PCA (optionally whitened), fitted on the bank images: y = W x + b
            assert cfg.feature_dim is not None  # ScorerConfig guarantees it
            self.register_buffer("proj_weight", torch.eye(cfg.feature_dim, d))  # [D, C], set by set_projection
            self.register_buffer("proj_bias", torch.zeros(cfg.feature_dim))  # [D]
            d = cfg.feature_dim
        self.register_buffer("memory_bank", torch.zeros(bank_size, d))  # [B, D]
        self.register_buffer("bank_sq", torch.zeros(bank_size))  # ||bank||^2, precomputed
        # raw -> normalized: (raw - offset) * scale; threshold_raw maps to 0.5
        self.register_buffer("norm_offset", torch.tensor(0.0))
        self.register_buffer("norm_scale", torch.tensor(1.0))
        self.register_buffer("threshold_raw", torch.tensor(0.5))

    def set_projection(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """weight [D, C], bias [D]: the learnt projection of the C patch channels (fit_pca)."""
        self.proj_weight.copy_(weight)
        self.proj_bias.copy_(bias)

    def set_bank(self, bank: torch.Tensor) -> None:
        """bank: [B, D] patch features of good training images."""
        self.memory_bank.copy_(bank)
        self.bank_sq.copy_((bank * bank).sum(dim=1))

    def set_threshold(self, threshold_raw: float, offset: float) -> None:
        """Calibrate: raw `offset` (typical good pixel) -> 0, `threshold_raw` -> 0.5."""
        span = max(threshold_raw - offset, 1e-12)
        self.threshold_raw.fill_(threshold_raw)
        self.norm_offset.fill_(offset)
        self.norm_scale.fill_(0.5 / span)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, C] -> float [N, C, S, S] in [0, 1]."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        s = self.cfg.image_size
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)

    def patch_channels(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, S, S] -> patch features before any learnt projection [N, C_p, h, w]."""
        return self.patches(self.encoder(x))

    def project(self, f: torch.Tensor) -> torch.Tensor:
        """[N, C_p, h, w] -> [N, D, h, w]: the learnt projection as a 1x1 conv (identity for `group`)."""
        if not self.learnt_projection:
            return f
        return F.conv2d(f, self.proj_weight[:, :, None, None], self.proj_bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, S, S] -> patch features [N, D, h, w]."""
        return self.project(self.patch_channels(x))

    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, S, S] -> unnormalized anomaly map [N, S, S] (smoothed NN distance)."""
        f = self.features(x)
        n, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(n * h * w, d)  # [N*h*w, D]
        dist = nearest_distance(q, self.memory_bank, self.bank_sq, self.cfg.knn_chunk).reshape(n, 1, h, w)
        return self.distance_map(dist)

    def distance_map(self, dist: torch.Tensor) -> torch.Tensor:
        """Patch distances [N, 1, h, w] -> unnormalized anomaly map [N, S, S] (upsampled, smoothed)."""
        s = self.cfg.image_size
        dist = F.interpolate(dist, size=(s, s), mode="bilinear", align_corners=False)
        return self.blur(dist)[:, 0]

    def reduce(self, raw_map: torch.Tensor) -> torch.Tensor:
        """[N, S, S] -> image score [N] (max, or mean of the top-k pixels)."""
        flat = raw_map.flatten(1)
        if self.cfg.score_reduce == "max":
            return flat.max(dim=1).values
        k = max(1, int(self.cfg.topk_fraction * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw map or score [N, ...] -> normalized (typical good pixel 0, threshold 0.5)."""
        return (raw - self.norm_offset) * self.norm_scale

    def forward(self, frames: torch.Tensor) -> InspectorOutput:
        raw = self.raw_map(self.preprocess(frames))
        raw_score = self.reduce(raw)
        amap, score = self.normalize(raw), self.normalize(raw_score)
        # decide on the raw score: the normalized one can round onto 0.5 from either side
        return InspectorOutput(score, amap, raw_score >= self.threshold_raw)
