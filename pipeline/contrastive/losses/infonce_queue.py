"""InfoNCE against a queue of negatives (MoCo v2): the positive is the momentum
encoder's key of the other view; negatives are keys of earlier batches."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class InfoNCEQueueLoss(nn.Module):
    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """q: [N, D] queries, k: [N, D] positive keys (no grad), queue: [K, D] negatives -> scalar."""
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        pos = (q * k).sum(dim=1, keepdim=True)  # [N, 1]
        neg = q @ F.normalize(queue, dim=1).T  # [N, K]
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
