"""Seeded synthetic line-camera surfaces, with and without defects (exact pixel masks).

Loupe's embedded default data: it feeds ``make demo``, the fast tests and the README
figures, so it must be deterministic, dependency-light (stdlib, numpy, cv2) and quick.

Conventions
-----------
* Images are grayscale ``uint8 [H, W]``; masks are ``bool [H, W]``.
* Axis 1 (x, width) is the *scan* direction of a line camera, axis 0 (y, height) runs
  along the sensor line. Sensor-fixed effects (pixel gain, lens/illumination falloff)
  therefore vary with y, and web-direction effects (brushing, drift) vary with x.
* Every function takes its randomness as an ``np.random.Generator``: same generator
  state in, same bytes out.
* A defect is built as a float change field ``d`` plus a support mask. The mask is the
  region where ``|d|`` exceeds ``_VISIBLE`` gray levels (holes filled); ``d`` is then
  zeroed outside the mask, so *no* pixel outside the mask changes at all, and the
  cut-off at the mask border is at most ``_VISIBLE`` levels (below sensor noise).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DEFECTS",
    "GENERATOR_VERSION",
    "TEXTURES",
    "add_defect",
    "make_strip",
    "make_surface",
    "write_dataset",
]

TEXTURES: tuple[str, ...] = ("brushed_metal", "woven_fabric", "wood_grain", "tile")
DEFECTS: tuple[str, ...] = ("scratch", "crack", "spot", "dent", "contamination", "missing_print")

# Bump whenever generated pixels change: it is recorded in params.json, so cached
# datasets written by an older generator are regenerated instead of silently reused.
GENERATOR_VERSION = 1

# Changes of at most this many gray levels are "not visible" (sensor noise is 1-2.5).
_VISIBLE = 2.0
# Supersampling factor for drawing thin anti-aliased lines.
_SS = 4

Points = np.ndarray  # float [N, 2] of (x, y) pixel-centre coordinates


# --------------------------------------------------------------------------- noise


@functools.lru_cache(maxsize=None)
def _cubic_gain(cell: int) -> float:
    """Mean variance of cubic upsampling (factor ``cell``) applied to unit white noise.

    Used to renormalise smooth noise to unit std without measuring the sample (sample
    std of a field with cells larger than the image would be meaningless).
    """
    if cell == 1:
        return 1.0
    impulse = np.zeros((1, 9), np.float32)
    impulse[0, 4] = 1.0
    resp = cv2.resize(impulse, (9 * cell, 1), interpolation=cv2.INTER_CUBIC)
    return float((resp.astype(np.float64) ** 2).sum() / cell)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: tuple[float, float]) -> np.ndarray:
    """Zero-mean, ~unit-std Gaussian noise with correlation lengths ``cell=(cy, cx)`` pixels.

    Returns float32 [H, W]. Anisotropic cells (e.g. (1, 60)) give streaks along x. The
    cost is independent of the cell size (coarse grid + cubic resize), so it is cheap
    even on an 8192-wide strip.
    """
    h, w = shape
    cy, cx = max(1, int(round(cell[0]))), max(1, int(round(cell[1])))
    gh, gw = h // cy + 4, w // cx + 4
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    up = grid if cy == cx == 1 else cv2.resize(grid, (gw * cx, gh * cy), interpolation=cv2.INTER_CUBIC)
    out = up[cy : cy + h, cx : cx + w]
    return (out / math.sqrt(_cubic_gain(cy) * _cubic_gain(cx))).astype(np.float32)


def _noise_1d(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """Smooth 1-D unit noise, float32 [n]."""
    return _smooth_noise(rng, (1, max(n, 1)), (1, cell))[0, :n]


# --------------------------------------------------------------------------- textures


def _brushed_metal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Brushed steel/aluminium: fine streaks along the scan + grain + faint mottling. float32 [H, W]."""
    base = rng.uniform(115.0, 160.0)
    c = rng.uniform(0.75, 1.3)  # per-part contrast variation
    streaks = (
        rng.uniform(4.0, 6.5) * _smooth_noise(rng, shape, (1, rng.uniform(20, 50)))
        + rng.uniform(2.5, 4.5) * _smooth_noise(rng, shape, (1, rng.uniform(120, 400)))
        + rng.uniform(1.5, 3.0) * _smooth_noise(rng, shape, (2, rng.uniform(600, 1500)))
    )
    grain = rng.uniform(1.5, 3.0) * _smooth_noise(rng, shape, (1, 2))
    mottle = rng.uniform(2.0, 5.0) * _smooth_noise(rng, shape, (rng.uniform(25, 60),) * 2)
    tex = base + c * (streaks + grain) + mottle
    # Optics: a streak one sensor pixel tall is slightly spread over its neighbours.
    return cv2.GaussianBlur(tex, (1, 3), sigmaX=0.1, sigmaY=0.6)


def _woven_fabric(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Plain-weave fabric: crossing warp/weft yarns with jittered pitch and yarn irregularity."""
    h, w = shape
    pitch_x = rng.uniform(9.0, 13.0)
    pitch_y = pitch_x * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Yarns are never perfectly straight: smooth displacement, in yarn units.
    jit = rng.uniform(0.06, 0.14)
    u = xx / pitch_x + rng.uniform(0, 2) + jit * _smooth_noise(rng, shape, (25, 25))
    v = yy / pitch_y + rng.uniform(0, 2) + jit * _smooth_noise(rng, shape, (25, 25))
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    iu_i = (iu - iu.min()).astype(np.int64)
    iv_i = (iv - iv.min()).astype(np.int64)
    warp_on_top = (iu_i + iv_i) % 2 == 0
    # A yarn is round: bright crest, dark gaps beside it; it dips where it goes under.
    # The top yarn's float is long and flat along it, round across it, so each cell reads
    # as an oval oriented along the top yarn: alternating orientation = plain weave.
    sharp = rng.uniform(0.7, 1.1)
    warp = np.sin(np.pi * fu) ** sharp * (0.6 + 0.4 * np.sin(np.pi * fv) ** 0.35)
    weft = np.sin(np.pi * fv) ** sharp * (0.6 + 0.4 * np.sin(np.pi * fu) ** 0.35)
    yarn = np.where(warp_on_top, warp, weft)
    # Yarn-to-yarn thickness/dye variation (indexed per yarn so it follows the jitter).
    warp_gain = rng.normal(0.0, 0.05, iu_i.max() + 1).astype(np.float32)
    weft_gain = rng.normal(0.0, 0.05, iv_i.max() + 1).astype(np.float32)
    gain = 1.0 + np.where(warp_on_top, warp_gain[iu_i], weft_gain[iv_i])
    base = rng.uniform(95.0, 145.0)
    amp = rng.uniform(45.0, 70.0)
    hair = rng.uniform(2.0, 3.5) * _smooth_noise(rng, shape, (1, 1))
    tex = base + amp * (yarn * gain - 0.6) + hair
    return cv2.GaussianBlur(tex.astype(np.float32), (3, 3), 0.6)


def _wood_grain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Planed wood: flowing annual rings (sharp latewood edge), fibres and pores along the scan."""
    ring_p = rng.uniform(12.0, 24.0)
    yy = np.mgrid[0 : shape[0], 0 : shape[1]][0].astype(np.float32)
    flow = ring_p * (
        rng.uniform(1.0, 2.0) * _smooth_noise(rng, shape, (60, rng.uniform(200, 400)))
        + rng.uniform(0.15, 0.35) * _smooth_noise(rng, shape, (12, 60))
    )
    v = (yy + flow) / ring_p + rng.uniform(0, 1)
    f = v - np.floor(v)
    # Earlywood (light) darkens gradually into latewood, then jumps back: asymmetric.
    ring = f ** rng.uniform(2.0, 4.0)
    ring = cv2.GaussianBlur(ring.astype(np.float32), (5, 5), 0.8)
    fibres = rng.uniform(2.5, 4.5) * _smooth_noise(rng, shape, (1, rng.uniform(15, 40)))
    pores = np.minimum(_smooth_noise(rng, shape, (1, 5)) + 2.2, 0.0) * rng.uniform(6.0, 12.0)
    base = rng.uniform(135.0, 175.0)
    tex = base - rng.uniform(30.0, 50.0) * ring + fibres + pores
    tex += rng.uniform(3.0, 6.0) * _smooth_noise(rng, shape, (40, 120))
    return tex.astype(np.float32)


def _tile(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Ceramic tiles: mottled glaze, per-tile shade, bevelled edges and darker grout lines."""
    h, w = shape
    pitch = rng.uniform(40.0, 64.0)
    grout_w = rng.uniform(2.0, 3.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx + rng.uniform(0, pitch)) / pitch
    v = (yy + rng.uniform(0, pitch)) / (pitch * rng.uniform(0.97, 1.03))
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    dist = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) * pitch  # px to nearest grout
    grout_alpha = np.clip(grout_w / 2 + 0.5 - dist, 0.0, 1.0)
    iu_i = (iu - iu.min()).astype(np.int64)
    iv_i = (iv - iv.min()).astype(np.int64)
    shade = rng.normal(0.0, 3.5, (iv_i.max() + 1, iu_i.max() + 1)).astype(np.float32)
    # Bevel lit from the upper-left: left/top edges bright, right/bottom edges dark.
    bev = rng.uniform(4.0, 8.0)

    def edge(t: np.ndarray) -> np.ndarray:  # ~2 px wide falloff next to the grout
        return np.exp(-((t * pitch - grout_w / 2) / 2.0) ** 2)

    bevel = bev * (edge(fu) + edge(fv) - edge(1 - fu) - edge(1 - fv))
    glaze = (
        rng.uniform(3.0, 5.0) * _smooth_noise(rng, shape, (6, 6))
        + rng.uniform(2.0, 4.0) * _smooth_noise(rng, shape, (25, 25))
        + rng.uniform(1.0, 2.0) * _smooth_noise(rng, shape, (1, 1))
    )
    base = rng.uniform(140.0, 180.0)
    tiles = base + shade[iv_i, iu_i] + bevel + glaze
    grout = base - rng.uniform(35.0, 55.0) + 3.0 * _smooth_noise(rng, shape, (2, 2))
    return (tiles * (1 - grout_alpha) + grout * grout_alpha).astype(np.float32)


_TEXTURE_FNS: dict[str, Callable[[np.random.Generator, tuple[int, int]], np.ndarray]] = {
    "brushed_metal": _brushed_metal,
    "woven_fabric": _woven_fabric,
    "wood_grain": _wood_grain,
    "tile": _tile,
}


def _lighting_surface(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Gain field for a single frame: linear gradient (random direction) x off-centre vignette.

    float32 [H, W], values around 0.75-1.2.
    """
    h, w = shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    theta = rng.uniform(0.0, 2 * np.pi)
    grad = 1.0 + rng.uniform(0.03, 0.18) * (x * np.cos(theta) + y * np.sin(theta)) / math.sqrt(2)
    cx, cy = rng.uniform(-0.4, 0.4, 2)
    vignette = 1.0 - rng.uniform(0.03, 0.15) * ((x - cx) ** 2 + (y - cy) ** 2) / 2
    return (grad * vignette).astype(np.float32)


def _lighting_strip(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Gain field for a line-scan strip: fixed profile across the sensor (y), slow drift along x.

    float32 [H, W]. The drift has a correlation length of ~1500 px, so neighbouring
    frames cut from the strip look alike but far-apart parts of it do not.
    """
    h, w = shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    profile = 1.0 + rng.uniform(-0.08, 0.08) * y - rng.uniform(0.04, 0.15) * y**2
    drift = 1.0 + rng.uniform(0.02, 0.05) * _noise_1d(rng, w, 1500)[None, :]
    tilt = rng.uniform(0.01, 0.04) * y * _noise_1d(rng, w, 2500)[None, :]  # light bar slowly tilting
    return (profile * drift + tilt).astype(np.float32)


def _sensor(rng: np.random.Generator, radiance: np.ndarray) -> np.ndarray:
    """Line sensor: per-pixel gain (PRNU, constant along the scan) + read noise -> uint8 [H, W]."""
    h, w = radiance.shape
    prnu = 1.0 + rng.uniform(0.002, 0.006) * rng.standard_normal((h, 1), dtype=np.float32)
    sigma = rng.uniform(1.0, 2.2)
    noisy = radiance * prnu + sigma * rng.standard_normal((h, w), dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _check_texture(texture: str) -> None:
    if texture not in _TEXTURE_FNS:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def make_surface(rng: np.random.Generator, texture: str, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """One frame of a good (defect-free) surface.

    Args:
        rng: source of all randomness (phase, pitch, contrast, lighting, noise).
        texture: one of ``TEXTURES``.
        size: ``(H, W)`` in pixels.

    Returns:
        uint8 [H, W] grayscale image.
    """
    _check_texture(texture)
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8x8, got {size}")
    tex = _TEXTURE_FNS[texture](rng, (h, w))
    return _sensor(rng, tex * _lighting_surface(rng, (h, w)))


# --------------------------------------------------------------------------- defect helpers


def _render_lines(shape: tuple[int, int], lines: list[tuple[Points, np.ndarray]]) -> np.ndarray:
    """Anti-aliased coverage of polylines, float32 [H, W] in [0, 1].

    ``lines`` holds ``(points [N, 2] (x, y), widths [N - 1])`` with per-segment widths in
    pixels (tapering cracks). Drawn at ``_SS``x resolution in the lines' bounding box and
    area-downsampled, so 1-px-wide lines get a correct partial coverage.
    """
    h, w = shape
    cover = np.zeros((h, w), np.float32)
    allp = np.concatenate([p for p, _ in lines])
    pad = int(math.ceil(max(float(np.max(wd)) for _, wd in lines))) + 2
    x0 = max(int(math.floor(allp[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(allp[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(allp[:, 0].max())) + pad + 1, w)
    y1 = min(int(math.ceil(allp[:, 1].max())) + pad + 1, h)
    if x1 <= x0 or y1 <= y0:
        return cover
    canvas = np.zeros(((y1 - y0) * _SS, (x1 - x0) * _SS), np.uint8)
    shift = 4  # cv2 fixed-point fractional bits: sub-pixel endpoints
    for pts, widths in lines:
        # pixel-centre coords -> supersampled-canvas coords (pixel j spans [j-0.5, j+0.5)).
        q = ((pts - [x0, y0] + 0.5) * _SS - 0.5) * (1 << shift)
        q = np.rint(q).astype(np.int64)
        for i in range(len(q) - 1):
            t = max(1, int(round(float(widths[i]) * _SS)))
            cv2.line(canvas, tuple(map(int, q[i])), tuple(map(int, q[i + 1])), 255, t, cv2.LINE_AA, shift)
    small = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    cover[y0:y1, x0:x1] = small
    return cover


def _place(
    rng: np.random.Generator, lines: list[tuple[Points, np.ndarray]], shape: tuple[int, int]
) -> list[tuple[Points, np.ndarray]]:
    """Translate (and if needed shrink) polylines to a random spot fully inside the image."""
    h, w = shape
    allp = np.concatenate([p for p, _ in lines])
    margin = max(float(np.max(wd)) for _, wd in lines) / 2 + 3.0
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    room = np.array([w - 1 - 2 * margin, h - 1 - 2 * margin])
    scale = min(1.0, float(np.min(room / span)))
    shift = np.array([
        rng.uniform(margin, margin + max(room[0] - span[0] * scale, 0.0)),
        rng.uniform(margin, margin + max(room[1] - span[1] * scale, 0.0)),
    ])
    return [((pts - lo) * scale + shift, wd) for pts, wd in lines]


def _blob_rho(rng: np.random.Generator, shape: tuple[int, int], area_frac: float, irregular: float) -> np.ndarray:
    """Normalised radius of a random irregular ellipse placed fully inside the image.

    float32 [H, W]; the blob is ``rho < 1`` and covers ~``area_frac`` of the image.
    """
    h, w = shape
    r = math.sqrt(area_frac * h * w / math.pi)
    ecc = rng.uniform(1.0, 2.0)
    rx, ry = r * math.sqrt(ecc), r / math.sqrt(ecc)
    ks = np.arange(2, 6)
    amps = rng.uniform(0.0, irregular, ks.size) / np.sqrt(ks)
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    reach = rx * (1.0 + amps.sum()) + 2.0  # bounding radius of the perturbed ellipse
    reach = min(reach, (min(h, w) - 1) / 2 - 0.5)
    cx = rng.uniform(reach, w - 1 - reach)
    cy = rng.uniform(reach, h - 1 - reach)
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    a = dx * math.cos(ang) + dy * math.sin(ang)
    b = -dx * math.sin(ang) + dy * math.cos(ang)
    rho = np.sqrt((a / rx) ** 2 + (b / ry) ** 2)
    phi = np.arctan2(b, a)
    wobble = 1.0 + sum(float(am) * np.cos(k * phi + ph) for k, am, ph in zip(ks, amps, phases))
    return (rho / wobble).astype(np.float32)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a bool [H, W] mask (flood fill from the border)."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    flood = pad.copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def _support(d: np.ndarray, close: int = 0, fill: bool = True) -> np.ndarray:
    """bool [H, W] mask of visibly changed pixels (|d| > _VISIBLE).

    ``close`` bridges sub-pixel gaps (e.g. between a groove and its flank); ``fill`` fills
    enclosed holes, which is right for blobs but not for lines (a looping hair must not
    claim the untouched surface inside its loop).
    """
    m = np.abs(d) > _VISIBLE
    if close:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close))
        m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_CLOSE, k).astype(bool)
    return _fill_holes(m) if fill else m


def _sign(rng: np.random.Generator) -> float:
    """+1.0 or -1.0 with equal probability (bright or dark variant)."""
    return 1.0 if rng.random() < 0.5 else -1.0


# --------------------------------------------------------------------------- defects
# Each returns a float32 [H, W] change field d (added to the image) and a bool support.


def _scratch(rng: np.random.Generator, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin (1-3 px) gently curved line, bright (burnished) or dark (groove), fading in places."""
    h, w = f.shape
    side = min(h, w)
    length = rng.uniform(0.3, 0.65) * side
    theta = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.2, 0.2) * length
    t = np.linspace(0.0, 1.0, 48)[:, None]
    p0, p1, p2 = np.array([0.0, 0.0]), np.array([length / 2, bend]), np.array([length, 0.0])
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    pts = pts @ rot.T
    width = rng.uniform(1.0, 3.0)
    lines = [(pts, np.full(len(pts) - 1, width))]
    has_flank = rng.random() < 0.5
    if has_flank:  # opposite-sign edge beside the groove: reads as relief under oblique light
        normal = np.array([-math.sin(theta), math.cos(theta)]) * (width / 2 + 1.0)
        lines.append((pts + normal, np.full(len(pts) - 1, 1.0)))
    lines = _place(rng, lines, (h, w))
    sign = _sign(rng)
    amp = rng.uniform(22.0, 40.0)
    fade = np.clip(0.75 + 0.3 * _smooth_noise(rng, (h, w), (18, 18)), 0.35, 1.0)
    d = sign * amp * fade * _render_lines((h, w), lines[:1])
    if has_flank:
        d -= sign * 0.45 * amp * fade * _render_lines((h, w), lines[1:])
    d = cv2.GaussianBlur(d, (3, 3), 0.5)  # lens PSF
    return d, _support(d, close=3, fill=False)


def _crack(rng: np.random.Generator, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dark jagged line, tapering towards its tips, with 1-3 side branches."""
    h, w = f.shape
    side = min(h, w)

    def jagged(start: np.ndarray, heading: float, length: float, w0: float, w1: float) -> tuple[Points, np.ndarray]:
        pts = [start]
        walked = 0.0
        drift = 0.0
        while walked < length:
            step = rng.uniform(2.0, 6.0)
            drift += rng.normal(0.0, 0.08)  # slow wander of the overall direction
            ang = heading + drift + rng.normal(0.0, 0.45)  # jag
            pts.append(pts[-1] + step * np.array([math.cos(ang), math.sin(ang)]))
            walked += step
        arr = np.array(pts)
        widths = np.linspace(w0, w1, len(arr) - 1)
        return arr, widths

    length = rng.uniform(0.35, 0.6) * side
    heading = rng.uniform(0, 2 * np.pi)
    w0 = rng.uniform(1.6, 2.8)
    main = jagged(np.zeros(2), heading, length, w0, 0.7)
    lines = [main]
    for _ in range(int(rng.integers(1, 4))):
        n_seg = len(main[1])
        i = int(rng.integers(n_seg // 5, max(n_seg * 4 // 5, n_seg // 5 + 1)))  # not at the tips
        branch_heading = heading + _sign(rng) * rng.uniform(0.4, 1.1)
        lines.append(jagged(main[0][i], branch_heading, rng.uniform(0.2, 0.5) * length, 0.8 * main[1][i], 0.6))
    lines = _place(rng, lines, (h, w))
    cover = _render_lines((h, w), lines)
    cover = cv2.GaussianBlur(cover, (3, 3), 0.5)
    # Multiplicative darkening: a crack is a shadowed gap, darker on bright surfaces.
    depth = rng.uniform(0.25, 0.42)
    d = -depth * np.maximum(f, 40.0) * cover
    return d, _support(d, close=3, fill=False)


def _spot(rng: np.random.Generator, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Irregular dark or bright stain, soft- or hard-edged, mottled, sometimes with a drying ring."""
    h, w = f.shape
    rho = _blob_rho(rng, (h, w), rng.uniform(0.01, 0.05), irregular=0.25)
    soft = rng.uniform(0.15, 0.6)
    s = np.clip((1.0 - rho) / soft, 0.0, 1.0)
    s = s * s * (3 - 2 * s)  # smoothstep
    if rng.random() < 0.4:  # coffee-ring: pigment accumulates at the drying edge
        s = s * 0.6 + 0.6 * np.exp(-(((rho - 0.85) / 0.1) ** 2)) * (rho < 1)
    mottle = 1.0 + 0.2 * _smooth_noise(rng, (h, w), (4, 4))
    d = _sign(rng) * rng.uniform(16.0, 32.0) * s * mottle
    return d.astype(np.float32), _support(d)


def _dent(rng: np.random.Generator, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shallow dent: its slopes catch/lose the (oblique) light -> bright side + dark side."""
    h, w = f.shape
    rho = _blob_rho(rng, (h, w), rng.uniform(0.015, 0.05), irregular=0.08)
    depth = np.where(rho < 1.0, (1.0 - np.minimum(rho, 1.0) ** 2) ** 2, 0.0).astype(np.float32)
    gy, gx = np.gradient(depth)
    light = rng.uniform(0, 2 * np.pi)
    shade = gx * math.cos(light) + gy * math.sin(light)
    shade /= max(float(np.abs(shade).max()), 1e-6)
    d = rng.uniform(14.0, 28.0) * shade - rng.uniform(2.0, 8.0) * depth  # + slight occlusion darkening
    d = d.astype(np.float32)
    vis = np.abs(d) > _VISIBLE
    r_cut = float(rho[vis].max()) if vis.any() else 1.0
    return d, rho <= r_cut  # whole dent (incl. its flat-ish bottom), not just the lit slopes


def _contamination(rng: np.random.Generator, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreign matter: a curly hair/fibre, or a smear of foreign granular texture (dirt, grease)."""
    h, w = f.shape
    side = min(h, w)
    if rng.random() < 0.5:
        # Fibre: a random walk with smoothly varying curvature (curls, never kinks).
        n = max(int(rng.uniform(0.35, 0.7) * side / 1.5), 8)
        curv = rng.uniform(0.02, 0.07) * _noise_1d(rng, n, rng.uniform(8, 25)) * 1.5
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(curv)
        steps = 1.5 * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        pts = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
        width = rng.uniform(1.0, 2.0)
        lines = _place(rng, [(pts, np.full(n, width))], (h, w))
        cover = cv2.GaussianBlur(_render_lines((h, w), lines), (3, 3), 0.6)
        # Hairs are dark; light-coloured fibres show up bright.
        amp = -rng.uniform(30.0, 50.0) if rng.random() < 0.6 else rng.uniform(25.0, 40.0)
        d = (amp * cover).astype(np.float32)
        return d, _support(d, close=3, fill=False)
    rho = _blob_rho(rng, (h, w), rng.uniform(0.01, 0.04), irregular=0.35)
    s = np.clip((1.0 - rho) / rng.uniform(0.2, 0.5), 0.0, 1.0)
    alpha = rng.uniform(0.6, 0.9) * s * s * (3 - 2 * s)
    inside = rho < 1.0
    mean = float(f[inside].mean()) if inside.any() else float(f.mean())
    foreign = (
        mean
        + _sign(rng) * rng.uniform(8.0, 20.0)
        + rng.uniform(10.0, 18.0) * _smooth_noise(rng, (h, w), (2, 2))  # granular, isotropic
    )
    d = (alpha * (foreign - f)).astype(np.float32)
    return d, _support(d, close=3)


def _missing_print(rng: np.random.Generator, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rectangle where the surface pattern is missing: texture flattened to its local mean.

    Our textures carry no printed marks, so "missing print" is modelled as a patch where
    the pattern (weave, grain, brushing, glaze) is absent and the bare substrate shows:
    local brightness kept, structure removed, slight tone shift, sensor noise retained.
    """
    h, w = f.shape
    area = rng.uniform(0.015, 0.05) * h * w
    aspect = rng.uniform(1.0, 3.0)
    rw, rh = math.sqrt(area * aspect), math.sqrt(area / aspect)
    if rng.random() < 0.5:
        rw, rh = rh, rw
    rw, rh = min(rw, w - 8.0), min(rh, h - 8.0)
    x0 = rng.uniform(3.0, w - 3.0 - rw)
    y0 = rng.uniform(3.0, h - 3.0 - rh)
    rect = np.zeros((h, w), np.float32)
    cv2.rectangle(rect, (int(round(x0)), int(round(y0))), (int(round(x0 + rw)) - 1, int(round(y0 + rh)) - 1), 1.0, -1)
    alpha = cv2.GaussianBlur(rect, (5, 5), 0.9)  # slightly soft edge, like worn-off ink
    flat = cv2.GaussianBlur(f, (0, 0), 6.0)
    strength = rng.uniform(0.8, 1.0)
    target = (
        flat
        + (1.0 - strength) * (f - flat)
        + _sign(rng) * rng.uniform(5.0, 10.0)
        + rng.uniform(1.0, 2.0) * rng.standard_normal((h, w), dtype=np.float32)
    )
    d = (alpha * (target - f)).astype(np.float32)
    return d, alpha > 0.1


_DEFECT_FNS: dict[str, Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "spot": _spot,
    "dent": _dent,
    "contamination": _contamination,
    "missing_print": _missing_print,
}


def add_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Add one defect of ``kind`` at a random position fully inside ``image``.

    Args:
        rng: source of all randomness.
        image: uint8 [H, W] grayscale image (not modified).
        kind: one of ``DEFECTS``.

    Returns:
        ``(new_image, mask)``: uint8 [H, W] and bool [H, W]. Pixels outside ``mask`` are
        bit-identical to ``image``; ``mask`` covers every pixel the defect changed by more
        than ``_VISIBLE`` gray levels (and the defect's interior).
    """
    if kind not in _DEFECT_FNS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {DEFECTS}")
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
    if min(image.shape) < 16:
        raise ValueError(f"image too small for a defect: {image.shape}")
    f = image.astype(np.float32)
    for _ in range(8):  # a defect fully lost to clipping is possible in principle; retry
        d, mask = _DEFECT_FNS[kind](rng, f)
        d = np.where(mask, d, 0.0)
        new = np.clip(np.rint(f + d), 0, 255).astype(np.uint8)
        if mask.any() and not mask.all() and np.any(new != image):
            return new, mask
    raise RuntimeError(f"could not place a visible {kind!r} defect on this image")


# --------------------------------------------------------------------------- strips


def make_strip(
    rng: np.random.Generator,
    texture: str,
    height: int = 256,
    width: int = 8192,
    n_defects: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """A long line-scan strip of continuous surface with defects along it.

    The texture is generated over the full width (no seams) and lit by a profile that is
    fixed across the sensor and drifts slowly along the scan. Defects are placed one per
    equal segment of the strip (so they do not overlap), each inside a
    ``height x height`` window, kinds cycling through ``DEFECTS`` from a random start.

    Returns:
        ``(image, mask)``: uint8 [height, width] and bool [height, width].
    """
    _check_texture(texture)
    if height < 16 or width < 16:
        raise ValueError(f"strip must be at least 16x16, got {height}x{width}")
    shape = (int(height), int(width))
    image = _sensor(rng, _TEXTURE_FNS[texture](rng, shape) * _lighting_strip(rng, shape))
    mask = np.zeros(shape, bool)
    win = min(height, width)
    start = int(rng.integers(len(DEFECTS)))
    seg = width / max(n_defects, 1)
    for i in range(n_defects):
        lo, hi = int(i * seg), int((i + 1) * seg)
        if hi - lo >= win:
            x0 = int(rng.integers(lo, hi - win + 1))
        else:  # too many defects for the strip: allow overlap
            x0 = int(rng.integers(0, width - win + 1))
        kind = DEFECTS[(start + i) % len(DEFECTS)]
        new, m = add_defect(rng, image[:, x0 : x0 + win], kind)
        image[:, x0 : x0 + win] = new
        mask[:, x0 : x0 + win] |= m
    return image, mask


# --------------------------------------------------------------------------- datasets


def _sample_rng(seed: int, split: int, index: int) -> np.random.Generator:
    """Independent stream per image, so image k does not depend on the other counts."""
    return np.random.default_rng([int(seed), split, index])


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", array)  # deterministic bytes for identical arrays
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _read_params(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "params.json").read_text())
    except (OSError, ValueError):
        return None


def write_dataset(
    out_dir: Path,
    *,
    texture: str = "brushed_metal",
    n_train: int = 200,
    n_test_good: int = 40,
    n_test_defect: int = 60,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write an MVTec-AD-layout dataset and return the path of its ``split.json``.

    Layout (paths in split.json are relative to ``out_dir``)::

        train/good/000.png ...            good surfaces
        test/good/000.png ...             good surfaces
        test/<kind>/000.png ...           one defect each; n_test_defect spread evenly over DEFECTS
        ground_truth/<kind>/000_mask.png  uint8 0/255 masks
        split.json   {"description", "train": [[img, null, 0]...], "test": [[img, mask|null, label]...]}
        params.json  the arguments + GENERATOR_VERSION (cache key)

    Written to a temporary sibling folder and renamed into place (readers never see a
    half-written dataset). If ``out_dir/params.json`` already records the same
    parameters, nothing is written (cache hit); a dataset written with other parameters
    (or an older generator) is replaced. Any other existing, non-empty ``out_dir`` raises
    ``FileExistsError``. Deterministic under ``seed``: byte-identical files.
    """
    _check_texture(texture)
    out_dir = Path(out_dir)
    params = {
        "generator": "pipeline.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "texture": texture,
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_defect": int(n_test_defect),
        "size": int(size),
        "seed": int(seed),
    }
    split_path = out_dir / "split.json"
    existing = _read_params(out_dir)
    if existing == params and split_path.is_file():
        return split_path
    # Only ever replace a folder this function wrote (or an empty one): never a user's data.
    ours = isinstance(existing, dict) and existing.get("generator") == params["generator"]
    if out_dir.exists() and not ours and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not a synthetic dataset written by Loupe; not replacing it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the dataset should be readable like any folder
    try:
        shape = (int(size), int(size))
        train: list[list] = []
        test: list[list] = []
        for i in range(n_train):
            rel = f"train/good/{i:03d}.png"
            _write_png(tmp / rel, make_surface(_sample_rng(seed, 0, i), texture, shape))
            train.append([rel, None, 0])
        for i in range(n_test_good):
            rel = f"test/good/{i:03d}.png"
            _write_png(tmp / rel, make_surface(_sample_rng(seed, 1, i), texture, shape))
            test.append([rel, None, 0])
        counters = dict.fromkeys(DEFECTS, 0)
        for i in range(n_test_defect):
            kind = DEFECTS[i % len(DEFECTS)]
            k = counters[kind]
            counters[kind] += 1
            rng = _sample_rng(seed, 2, i)
            image, mask = add_defect(rng, make_surface(rng, texture, shape), kind)
            rel = f"test/{kind}/{k:03d}.png"
            rel_mask = f"ground_truth/{kind}/{k:03d}_mask.png"
            _write_png(tmp / rel, image)
            _write_png(tmp / rel_mask, mask.astype(np.uint8) * 255)
            test.append([rel, rel_mask, 1])
        split = {
            "description": (
                f"Loupe synthetic line-camera dataset: texture={texture}, {size}x{size} px, seed={seed}, "
                f"{n_train} train good, {n_test_good} test good, {n_test_defect} test defective "
                f"({', '.join(DEFECTS)}). Rows are [image, mask or null, label (1 = defective)]."
            ),
            "train": train,
            "test": test,
        }
        (tmp / "split.json").write_text(json.dumps(split, indent=1) + "\n")
        (tmp / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")

        old: Path | None = None
        if out_dir.exists():  # stale (other params / older generator): swap it out
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "d")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # A concurrent writer got there first; accept its result if it matches.
            if _read_params(out_dir) == params and split_path.is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return split_path
