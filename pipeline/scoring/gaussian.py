"""Separable Gaussian smoothing as two fixed convolutions (exports to any runtime)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GaussianBlur(nn.Module):
    """[N, 1, H, W] -> [N, 1, H, W], reflect-padded; sigma <= 0 is the identity."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.radius = max(0, math.ceil(4 * sigma)) if sigma > 0 else 0
        offs = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        k = torch.exp(-(offs**2) / (2 * sigma**2)) if sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", (k / k.sum()).view(1, 1, 1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.radius == 0:
            return x
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), self.kernel)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), self.kernel.transpose(2, 3))
