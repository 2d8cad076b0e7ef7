"""Dense (patch-level) InfoNCE in the spirit of DenseCL.

DenseCL matches locations of two views by feature similarity; we know the exact
geometry of our views, so each location of view A is matched to the same surface
point in view B (`views.correspondence`). A location's positive is its match;
negatives are all locations of the *other* images in the batch. Locations of the
same image are not used as negatives: on a uniform surface they are the same
material, and pushing them apart would teach the encoder position, not appearance.

Hard negatives: where view B carries an anomaly-like perturbation
(`perturb.py`), its key is no positive for anything; instead it is a negative
for every clean location of the same image ("this is not our surface").
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseInfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.2, max_negatives: int = 4096) -> None:
        super().__init__()
        self.temperature = temperature
        self.max_negatives = max_negatives

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        valid: torch.Tensor,
        generator: torch.Generator | None = None,
        hard_negative: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q: [N, D, h, w] view-A dense projections; k: [N, D, h, w] view-B projections
        resampled at A's locations; valid: bool [N, h, w], where the match lies inside
        view B; hard_negative: bool [N, h, w], keys that are perturbed (optional).
        Returns a scalar (0 if no anchor is left)."""
        n, d, h, w = q.shape
        q = F.normalize(q, dim=1).permute(0, 2, 3, 1).reshape(n, h * w, d)  # [N, hw, D]
        k = F.normalize(k, dim=1).permute(0, 2, 3, 1).reshape(n, h * w, d)
        hard = torch.zeros(n, h * w, dtype=torch.bool, device=q.device) if hard_negative is None else hard_negative.reshape(n, h * w)
        valid = valid.reshape(n, h * w) & ~hard
        if not valid.any():
            return q.sum() * 0.0
        owner = torch.arange(n, device=q.device).repeat_interleave(h * w)  # image of each key
        keys, key_owner, key_hard = k.reshape(n * h * w, d), owner, hard.reshape(-1)
        if keys.shape[0] > self.max_negatives:  # a random subset bounds memory; hard negatives always stay
            idx = torch.randperm(keys.shape[0], generator=generator).to(q.device)
            idx = torch.cat([idx[key_hard[idx]], idx[~key_hard[idx]]])[: max(self.max_negatives, int(key_hard.sum()))]
            keys, key_owner, key_hard = keys[idx], owner[idx], key_hard[idx]
        qv = q[valid]  # [M, D]
        qv_owner = owner[valid.reshape(-1)]
        pos = (qv * k[valid]).sum(dim=1, keepdim=True)  # [M, 1]
        neg = qv @ keys.T  # [M, K]
        same_clean = (qv_owner[:, None] == key_owner[None, :]) & ~key_hard[None, :]
        neg = neg.masked_fill(same_clean, float("-inf"))
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(qv.shape[0], dtype=torch.long, device=q.device))
