"""Mild photometric augmentation of view batches (tensor ops, seeded).

Line cameras see exposure drift, gain changes and slight defocus; we model those
and nothing stronger, so small low-contrast defects survive augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PhotometricConfig:
    brightness: float = 0.1  # additive shift, +-
    contrast: float = 0.2  # multiplicative around the mean, 1 +- this
    gamma: float = 0.2  # exponent 1 +- this
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_std: float = 0.01


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur. x: [N, C, H, W], sigma: [N] -> [N, C, H, W]."""
    radius = 3
    offs = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(offs[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)  # [N, 2r+1]
    n, c, h, w = x.shape
    # grouped conv: one kernel per (sample, channel)
    kk = k.repeat_interleave(c, dim=0)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kk[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kk[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def photometric(x: torch.Tensor, cfg: PhotometricConfig, g: torch.Generator) -> torch.Tensor:
    """x: [N, C, H, W] in [0, 1] -> same shape, jittered, in [0, 1]."""
    n = x.shape[0]

    def u(scale: float) -> torch.Tensor:
        return ((torch.rand(n, generator=g) * 2 - 1) * scale).view(n, 1, 1, 1)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + u(cfg.contrast)) + mean + u(cfg.brightness)
    x = x.clamp(1e-4, 1) ** (1 + u(cfg.gamma))
    if cfg.blur_prob > 0:
        sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * torch.rand(n, generator=g)
        blurred = _gaussian_blur(x, sigma)
        pick = (torch.rand(n, generator=g) < cfg.blur_prob).view(n, 1, 1, 1)
        x = torch.where(pick, blurred, x)
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)
