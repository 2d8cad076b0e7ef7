"""NT-Xent (SimCLR): each embedding's positive is its other view; the other 2N-2
embeddings of the batch are negatives."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NTXentLoss(nn.Module):
    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """z0, z1: [N, D] projections of two views of the same N images -> scalar loss."""
        n = z0.shape[0]
        z = F.normalize(torch.cat([z0, z1]), dim=1)  # [2N, D]
        logits = z @ z.T / self.temperature  # [2N, 2N]
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # i <-> i + N
        return F.cross_entropy(logits, target)
