"""Dense projection head (DenseCL): a 1x1-conv MLP applied at every location."""
from __future__ import annotations

import torch
import torch.nn as nn


class DenseProjectionHead(nn.Module):
    """[N, C, h, w] -> [N, out_dim, h, w]: 1x1 conv -> ReLU -> 1x1 conv."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
