"""Two random views of each image with known geometry.

Each view is an affine resampling of the image: x_image = A p + t, where p is a
point of the view in normalized [-1, 1] coordinates, A = scale * rotation(k * 90)
* flip. Knowing A and t exactly lets the dense objective match every feature-map
location of one view to the same surface point in the other.

Why these augmentations for surface inspection: crops of moderate scale (0.8x to
1.3x the scorer's resolution) keep small defects visible; flips and 90-degree
rotations are real symmetries of most surfaces; no colour drop, no cutout, no
strong blur, since those would erase exactly what we later need to see.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ViewConfig:
    crop_size: int = 128  # view side in pixels
    scale: tuple[float, float] = (0.4, 0.65)  # crop side as a fraction of the image side
    flips: bool = True
    rot90: bool = True


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def sample_affines(n: int, cfg: ViewConfig, g: torch.Generator, centers: torch.Tensor | None = None) -> torch.Tensor:
    """Random view geometry: [N, 2, 3] affine (A | t) for `F.affine_grid`.

    With `centers` ([N, 2], another view's translation), this view's centre is
    drawn within one crop size of it, so the two views always overlap.
    """
    s = _uniform(n, *cfg.scale, g)
    k = torch.randint(0, 4 if cfg.rot90 else 1, (n,), generator=g)
    angle = k.float() * torch.pi / 2
    cos, sin = torch.cos(angle).round(), torch.sin(angle).round()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [N, 2, 2]
    flip = torch.ones(n, 2)
    if cfg.flips:
        flip[:, 0] = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    a = s[:, None, None] * rot * flip[:, None, :]  # scale * R * diag(flip)
    room = (1 - s)[:, None]  # centre range keeping the crop inside the image
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * room
    if centers is not None:
        jitter = (torch.rand(n, 2, generator=g) * 2 - 1) * s[:, None]
        t = torch.clamp(centers + jitter, -room, room)
    return torch.cat([a, t[:, :, None]], dim=2)


def render_views(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """images: [N, C, H, W] float, theta: [N, 2, 3] -> views [N, C, size, size] (bilinear)."""
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def correspondence(theta_a: torch.Tensor, theta_b: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each cell centre of view A's [h, w] feature grid lies in view B.

    Returns grid [N, h, w, 2] (normalized B coordinates, for `F.grid_sample` with
    align_corners=False) and valid bool [N, h, w] (the point is inside view B).
    """
    n = theta_a.shape[0]
    ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    p = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(1, h * w, 2)  # (x, y)
    x_img = p @ theta_a[:, :, :2].transpose(1, 2) + theta_a[:, None, :, 2]  # [N, hw, 2]
    inv_b = torch.linalg.inv(theta_b[:, :, :2])
    p_b = (x_img - theta_b[:, None, :, 2]) @ inv_b.transpose(1, 2)
    valid = (p_b.abs() <= 1).all(dim=-1)
    return p_b.reshape(n, h, w, 2), valid.reshape(n, h, w)
