"""Spot-the-difference contrast: a clean location must match its clean twin in the
other view and *not* any perturbed location (Zou et al., ECCV 2022, made dense).

Unlike instance discrimination, no two good locations are ever pushed apart:
good surface may cluster as tightly as it likes (what a nearest-neighbour scorer
wants), while anomaly-like structure must land elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PerturbationContrastLoss(nn.Module):
    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """q: [N, D, h, w] clean view; k: [N, D, h, w] other view resampled at q's locations;
        valid: bool [N, h, w] match inside the other view; perturbed: bool [N, h, w] the
        matched key is perturbed. Anchors: valid clean locations; positive: their key;
        negatives: every perturbed key in the batch. Scalar; 0 without anchors or negatives."""
        d = q.shape[1]
        q = F.normalize(q, dim=1).permute(0, 2, 3, 1).reshape(-1, d)
        k = F.normalize(k, dim=1).permute(0, 2, 3, 1).reshape(-1, d)
        valid, perturbed = valid.reshape(-1), perturbed.reshape(-1)
        anchors = valid & ~perturbed
        negatives = valid & perturbed
        if not anchors.any() or not negatives.any():
            return q.sum() * 0.0
        qa = q[anchors]  # [M, D]
        pos = (qa * k[anchors]).sum(dim=1, keepdim=True)  # [M, 1]
        neg = qa @ k[negatives].T  # [M, P]
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(qa.shape[0], dtype=torch.long, device=q.device))
