"""View geometry (sample_affines, render_views, correspondence) and photometric jitter."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.contrastive.augment import PhotometricConfig, _gaussian_blur, photometric
from pipeline.contrastive.views import ViewConfig, correspondence, render_views, sample_affines


pytestmark = pytest.mark.usefixtures("single_thread")


def _smooth_image(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    """Random low-frequency images [n, 1, size, size] in [0, 1] (bilinear resampling is nearly exact)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 6, 6, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return img.clamp(0, 1)


def _cell_centres(h: int, w: int) -> torch.Tensor:
    ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)  # [h, w, 2] (x, y)


def _theta(scale: float, tx: float, ty: float, k: int = 0, flip: bool = False) -> torch.Tensor:
    c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
    a = torch.tensor([[c, -s], [s, c]], dtype=torch.float32) * scale
    if flip:
        a = a @ torch.diag(torch.tensor([-1.0, 1.0]))
    return torch.cat([a, torch.tensor([[tx], [ty]])], dim=1)


def _check_consistent(images: torch.Tensor, theta_a: torch.Tensor, theta_b: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """Sample view B at the correspondence grid and view A at its own cell centres: equal where valid."""
    va, vb = render_views(images, theta_a, size), render_views(images, theta_b, size)
    grid, valid = correspondence(theta_a, theta_b, h, w)
    n = images.shape[0]
    assert grid.shape == (n, h, w, 2) and valid.shape == (n, h, w) and valid.dtype == torch.bool
    centres = _cell_centres(h, w).expand(n, h, w, 2)
    a_at = F.grid_sample(va, centres, mode="bilinear", align_corners=False)[:, 0]
    # border padding: a valid point may lie in the last half pixel of B, beyond its outermost
    # pixel centre, where zero padding would blend in black
    b_at = F.grid_sample(vb, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    # and the ground truth: the image itself at the mapped surface point
    x_img = centres @ theta_a[:, None, :, :2].transpose(-1, -2) + theta_a[:, None, None, :, 2]
    truth = F.grid_sample(images, x_img, mode="bilinear", align_corners=False)[:, 0]
    assert valid.any()
    diff = (a_at - b_at).abs()[valid]
    assert diff.max() < 0.02, diff.max()
    inner = valid & (grid.abs().amax(dim=-1) <= 1 - 1 / size)  # zero padding is exact here too
    b_zero = F.grid_sample(vb, grid, mode="bilinear", align_corners=False)[:, 0]
    if inner.any():
        assert (a_at - b_zero).abs()[inner].max() < 0.02
    assert (a_at - truth).abs().max() < 0.02
    # where invalid, B really is sampled outside its frame
    assert (grid[~valid].abs().amax(dim=-1) > 1).all()
    return valid


def test_correspondence_matches_rendered_views_known_thetas() -> None:
    images = _smooth_image(3)
    theta_a = torch.stack([_theta(0.5, -0.2, 0.1), _theta(0.6, 0.3, -0.3), _theta(0.45, 0.0, 0.0)])
    theta_b = torch.stack([_theta(0.55, 0.1, 0.2), _theta(0.4, 0.2, -0.1), _theta(0.6, -0.3, 0.35)])
    valid = _check_consistent(images, theta_a, theta_b, size=64, h=8, w=8)
    assert not valid.all()  # partially overlapping views: some points fall outside B


def test_correspondence_with_rot90_and_flips() -> None:
    images = _smooth_image(4, seed=1)
    theta_a = torch.stack([_theta(0.5, 0.1, 0.0, k=1), _theta(0.5, 0.0, 0.1, k=2, flip=True),
                           _theta(0.6, -0.2, 0.2, k=3), _theta(0.5, 0.2, -0.2, k=0, flip=True)])
    theta_b = torch.stack([_theta(0.6, 0.0, 0.1, k=3, flip=True), _theta(0.45, 0.1, 0.0, k=1),
                           _theta(0.5, -0.1, 0.1, k=2, flip=True), _theta(0.55, 0.1, -0.1, k=1)])
    _check_consistent(images, theta_a, theta_b, size=64, h=8, w=8)


@pytest.mark.parametrize("rot90,flips", [(True, True), (False, False), (True, False)])
def test_correspondence_with_sampled_affines(rot90: bool, flips: bool) -> None:
    cfg = ViewConfig(crop_size=64, scale=(0.4, 0.65), rot90=rot90, flips=flips)
    g = torch.Generator().manual_seed(3)
    images = _smooth_image(8, seed=2)
    theta_a = sample_affines(8, cfg, g)
    theta_b = sample_affines(8, cfg, g, centers=theta_a[:, :, 2])
    _check_consistent(images, theta_a, theta_b, size=64, h=4, w=6)  # non-square grid


def test_correspondence_identity_for_identical_thetas() -> None:
    cfg = ViewConfig()
    theta = sample_affines(5, cfg, torch.Generator().manual_seed(0))
    h, w = 4, 7
    grid, valid = correspondence(theta, theta.clone(), h, w)
    torch.testing.assert_close(grid, _cell_centres(h, w).expand(5, h, w, 2), atol=1e-5, rtol=0)
    assert valid.all()


def test_correspondence_rotated_view_is_rotated_grid() -> None:
    # B = A rotated by 90 degrees about the same centre -> B coords are A's rotated back
    theta_a, theta_b = _theta(0.5, 0.1, -0.2)[None], _theta(0.5, 0.1, -0.2, k=1)[None]
    grid, valid = correspondence(theta_a, theta_b, 3, 3)
    p = _cell_centres(3, 3)
    expected = torch.stack([p[..., 1], -p[..., 0]], dim=-1)  # R(-90) p
    torch.testing.assert_close(grid[0], expected, atol=1e-5, rtol=0)
    assert valid.all()


def test_correspondence_outside_is_invalid() -> None:
    # A at x centre -0.4, B at +0.4, both half-width 0.5: p_b = p_a - 1.6 along x
    theta_a, theta_b = _theta(0.5, -0.4, 0.0)[None], _theta(0.5, 0.4, 0.0)[None]
    grid, valid = correspondence(theta_a, theta_b, 4, 4)
    centres = _cell_centres(4, 4)
    torch.testing.assert_close(grid[0, ..., 0], centres[..., 0] - 1.6, atol=1e-5, rtol=0)
    torch.testing.assert_close(grid[0, ..., 1], centres[..., 1], atol=1e-5, rtol=0)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, 3] = True  # only px = 0.75 lands inside B (0.75 - 1.6 = -0.85)
    assert torch.equal(valid[0], expected)
    # disjoint views: nothing valid
    _, none = correspondence(_theta(0.3, -0.6, 0.0)[None], _theta(0.3, 0.6, 0.0)[None], 4, 4)
    assert not none.any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_affines_inside_image_and_overlapping(seed: int) -> None:
    cfg = ViewConfig(scale=(0.3, 0.9))
    g = torch.Generator().manual_seed(seed)
    n = 512
    a = sample_affines(n, cfg, g)
    b = sample_affines(n, cfg, g, centers=a[:, :, 2])
    eps = 1e-5
    for th in (a, b):
        assert th.shape == (n, 2, 3)
        lin = th[:, :, :2]
        s = lin.abs().sum(dim=1)  # per column: exactly one entry of magnitude s
        assert torch.allclose(s[:, 0], s[:, 1])
        scale = s[:, 0]
        assert (scale >= cfg.scale[0] - eps).all() and (scale <= cfg.scale[1] + eps).all()
        # orthogonal up to scale (rotation by k*90 and/or flip)
        eye = lin @ lin.transpose(1, 2) / scale[:, None, None] ** 2
        torch.testing.assert_close(eye, torch.eye(2).expand(n, 2, 2), atol=1e-6, rtol=0)
        # the crop [t - s, t + s] stays inside the image [-1, 1]
        assert (th[:, :, 2].abs() + scale[:, None] <= 1 + eps).all()
    # the second view's centre is within its own half-size of the first's: the views overlap
    sb = b[:, :, :2].abs().sum(dim=1)[:, 0]
    sa = a[:, :, :2].abs().sum(dim=1)[:, 0]
    gap = (b[:, :, 2] - a[:, :, 2]).abs()
    assert (gap <= sb[:, None] + eps).all()
    assert (gap < (sa + sb)[:, None]).all()
    _, valid = correspondence(a, b, 4, 4)
    assert valid.flatten(1).any(dim=1).all()  # every pair shares matched locations


def test_sample_affines_options_and_determinism() -> None:
    plain = ViewConfig(rot90=False, flips=False)
    th = sample_affines(64, plain, torch.Generator().manual_seed(0))
    lin = th[:, :, :2]
    assert (lin[:, 0, 1] == 0).all() and (lin[:, 1, 0] == 0).all() and (lin[:, 0, 0] > 0).all()
    assert torch.equal(lin[:, 0, 0], lin[:, 1, 1])
    full = ViewConfig()
    a = sample_affines(256, full, torch.Generator().manual_seed(1))
    b = sample_affines(256, full, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # rotations and flips actually occur: both signs of the determinant, off-diagonal entries
    det = torch.linalg.det(a[:, :, :2])
    assert (det > 0).any() and (det < 0).any()
    assert (a[:, 0, 1] != 0).any()


def test_render_views_shape_and_identity() -> None:
    images = _smooth_image(2, size=32)
    v = render_views(images, _theta(1.0, 0.0, 0.0).expand(2, 2, 3), 32)
    assert v.shape == (2, 1, 32, 32)
    torch.testing.assert_close(v, images, atol=1e-5, rtol=0)
    assert render_views(images, _theta(0.5, 0.0, 0.0).expand(2, 2, 3), 20).shape == (2, 1, 20, 20)


# --------------------------------------------------------------------------- photometric


def test_photometric_range_shape_determinism() -> None:
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    x[0] = 0.0
    x[1] = 1.0
    cfg = PhotometricConfig(blur_prob=0.5)
    a = photometric(x, cfg, torch.Generator().manual_seed(4))
    b = photometric(x, cfg, torch.Generator().manual_seed(4))
    c = photometric(x, cfg, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # mild: stays close to the input
    assert (a - x).abs().mean() < 0.2
    strong = PhotometricConfig(brightness=2.0, contrast=3.0, gamma=0.9, blur_prob=1.0, noise_std=0.5)
    s = photometric(x, strong, torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 1 and s.shape == x.shape


def test_photometric_noop_config_is_near_identity() -> None:
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = PhotometricConfig(brightness=0, contrast=0, gamma=0, blur_prob=0, noise_std=0)
    torch.testing.assert_close(photometric(x, cfg, torch.Generator()), x.clamp_min(1e-4), atol=1e-6, rtol=0)


def test_photometric_blur_preserves_constant() -> None:
    x = torch.full((2, 3, 16, 16), 0.4)
    y = _gaussian_blur(x, torch.tensor([0.3, 1.0]))
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
