"""Anomaly-like local perturbations with exact masks (hard negatives for the dense loss).

A good surface stays a good surface under our augmentations; a pasted patch, a
thin scar or a blob does not. Features that must tell a perturbed location from
the clean one (spot-the-difference, Zou et al. 2022; CutPaste, Li et al. 2021)
learn to react to local irregularities, which is what the scorer measures.
Pixels outside a perturbation's mask are never changed, and every masked pixel
is changed: the masks are exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("cutpaste", "scar", "blob", "smear", "perlin")
DEFAULT_KINDS = ("cutpaste", "scar", "blob", "smear")  # what the shipped configs were measured with


@dataclass
class PerturbConfig:
    prob: float = 0.0  # share of images (view B) that get perturbed; 0 disables
    max_count: int = 2  # perturbations per perturbed image, 1..max_count
    size: tuple[float, float] = (0.06, 0.2)  # extent as a fraction of the view side
    strength: tuple[float, float] = (0.06, 0.25)  # intensity change of scars and blobs
    kinds: tuple[str, ...] = DEFAULT_KINDS

    def __post_init__(self) -> None:
        self.size, self.strength, self.kinds = tuple(self.size), tuple(self.strength), tuple(self.kinds)
        bad = set(self.kinds) - set(KINDS)
        if bad or not self.kinds:
            raise ValueError(f"perturb.kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if not 0 <= self.prob <= 1 or self.max_count < 1 or not 0 < self.size[0] <= self.size[1] <= 1:
            raise ValueError("perturb: need 0 <= prob <= 1, max_count >= 1 and 0 < size[0] <= size[1] <= 1")


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand(1, generator=g))


def _cutpaste(img: torch.Tensor, cfg: PerturbConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a patch from elsewhere in the image (rotated/flipped, gain-shifted) and paste it."""
    c, h, w = img.shape
    ph = max(2, int(_u(g, *cfg.size) * h)); pw = max(2, int(_u(g, *cfg.size) * w))
    sy, sx = int(torch.randint(0, h - ph + 1, (1,), generator=g)), int(torch.randint(0, w - pw + 1, (1,), generator=g))
    patch = img[:, sy : sy + ph, sx : sx + pw].flip(-1).flip(-2)  # 180 degrees keeps the patch shape
    patch = (patch * _u(g, 0.85, 1.15) + _u(g, -0.08, 0.08)).clamp(0, 1)
    ty, tx = int(torch.randint(0, h - ph + 1, (1,), generator=g)), int(torch.randint(0, w - pw + 1, (1,), generator=g))
    delta = torch.zeros_like(img)
    delta[:, ty : ty + ph, tx : tx + pw] = patch - img[:, ty : ty + ph, tx : tx + pw]
    return delta, _box(h, w, ty, tx, ph, pw)


def _box(h: int, w: int, y: int, x: int, bh: int, bw: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y : y + bh, x : x + bw] = True
    return m


def _scar(img: torch.Tensor, cfg: PerturbConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A thin straight line (1-3 px) of a darker or brighter tone."""
    c, h, w = img.shape
    length = _u(g, *cfg.size) * 2 * max(h, w)
    cy, cx, ang = _u(g, 0, h - 1), _u(g, 0, w - 1), _u(g, 0, torch.pi)
    dy, dx = torch.sin(torch.tensor(ang)), torch.cos(torch.tensor(ang))
    yy, xx = _grid(h, w, img.device)
    along = (yy - cy) * dy + (xx - cx) * dx
    across = (-(yy - cy) * dx + (xx - cx) * dy).abs()
    alpha = ((_u(g, 0.5, 1.5) - across).clamp(0, 1) * (along.abs() <= length / 2)).clamp(0, 1)  # [h, w]
    sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
    return sign * _u(g, *cfg.strength) * alpha[None].expand(c, h, w), alpha > 0


def _grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.arange(h, dtype=torch.float32, device=device), torch.arange(w, dtype=torch.float32, device=device)
    return torch.meshgrid(ys, xs, indexing="ij")


def _ellipse(h: int, w: int, cfg: PerturbConfig, g: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft elliptical weight [h, w] (flat core, linear edge, exactly 0 outside) and the
    offsets (dy, dx) of each pixel from its centre, in radii."""
    ry, rx = _u(g, *cfg.size) * h / 2 + 1, _u(g, *cfg.size) * w / 2 + 1
    cy, cx = _u(g, 0, h - 1), _u(g, 0, w - 1)
    yy, xx = _grid(h, w, device)
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    return (1.5 * (1 - dy**2 - dx**2)).clamp(0, 1), dy, dx


def _blob(img: torch.Tensor, cfg: PerturbConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A stain (uniform tone shift) or, half the time, dent-like shading (lit on one
    side, shaded on the other) inside a soft ellipse."""
    c, h, w = img.shape
    alpha, dy, dx = _ellipse(h, w, cfg, g, img.device)
    if float(torch.rand(1, generator=g)) < 0.5:
        ang = _u(g, 0, 2 * torch.pi)
        alpha = alpha * (dy * torch.sin(torch.tensor(ang)) + dx * torch.cos(torch.tensor(ang))).clamp(-1, 1)
    sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
    return sign * _u(g, *cfg.strength) * alpha[None].expand(c, h, w), alpha != 0


def _smear(img: torch.Tensor, cfg: PerturbConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of fine texture (worn, polished or unprinted area): the region is blended
    towards a heavily blurred copy of itself."""
    c, h, w = img.shape
    alpha, _, _ = _ellipse(h, w, cfg, g, img.device)
    k = 9
    blurred = F.avg_pool2d(F.pad(img[None], (k // 2,) * 4, mode="replicate"), k, stride=1)[0]
    return alpha[None] * _u(g, 0.7, 1.0) * (blurred - img), alpha > 0


def _perlin(img: torch.Tensor, cfg: PerturbConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An irregular region (thresholded two-octave value noise, as DRAEM's Perlin masks; Zavrtanik
    et al., ICCV 2021) covering 2 x `size` of the view's area (at most 45%): half the time
    filled with the view's own surface from elsewhere (rolled and mirrored, gain-shifted),
    otherwise a tone shift of `strength`. Large, diffuse and ragged where the other kinds are
    small and regular: the shape of uneven grinding, breaks and frayed edges."""
    c, h, w = img.shape
    r = int(torch.randint(2, 6, (1,), generator=g))  # noise cells across the view: region scale
    coarse = torch.rand(1, 1, r, r, generator=g)
    fine = torch.rand(1, 1, 2 * r, 2 * r, generator=g)
    noise = sum(wt * F.interpolate(n, size=(h, w), mode="bicubic", align_corners=False)
                for wt, n in ((1.0, coarse), (0.5, fine)))[0, 0].to(img.device)  # [h, w]
    area = min(0.45, 2 * _u(g, *cfg.size))
    t = torch.quantile(noise.flatten(), 1 - area)
    alpha = ((noise - t) / 0.05).clamp(0, 1)  # soft 0.05-wide rim, exactly 0 below the threshold
    if float(torch.rand(1, generator=g)) < 0.5:
        dy, dx = int(torch.randint(h // 4, h - h // 4 + 1, (1,), generator=g)), int(torch.randint(w // 4, w - w // 4 + 1, (1,), generator=g))
        src = (img.flip(-1).roll((dy, dx), dims=(-2, -1)) * _u(g, 0.85, 1.15) + _u(g, -0.08, 0.08)).clamp(0, 1)
        delta = alpha[None] * _u(g, 0.5, 1.0) * (src - img)
    else:
        sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
        delta = sign * _u(g, *cfg.strength) * alpha[None].expand(c, h, w)
    return delta, alpha > 0


_MAKERS = {"cutpaste": _cutpaste, "scar": _scar, "blob": _blob, "smear": _smear, "perlin": _perlin}


def perturb(views: torch.Tensor, cfg: PerturbConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """views [N, C, H, W] in [0, 1] -> (perturbed views, mask bool [N, H, W] of changed pixels).

    Each image is perturbed with probability `cfg.prob`; the returned mask marks
    exactly the pixels whose value changed.
    """
    out = views.clone()
    n, c, h, w = views.shape
    for i in range(n):
        if float(torch.rand(1, generator=g)) >= cfg.prob:
            continue
        for _ in range(int(torch.randint(1, cfg.max_count + 1, (1,), generator=g))):
            kind = cfg.kinds[int(torch.randint(len(cfg.kinds), (1,), generator=g))]
            delta, _ = _MAKERS[kind](out[i], cfg, g)
            out[i] = (out[i] + delta).clamp(0, 1)
    mask = (out != views).any(dim=1)
    return out, mask


def cell_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel mask [N, H, W] -> feature-grid mask [N, h, w]: a cell is perturbed if any pixel is."""
    return F.adaptive_max_pool2d(mask[:, None].float(), (h, w))[:, 0] > 0
