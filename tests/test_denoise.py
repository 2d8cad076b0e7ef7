"""Cross-fitted patch denoising (pipeline/scoring/denoise.py): against a naive reference, and on a
contaminated synthetic training set, where it keeps the planted defects out of the memory bank."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.denoise import cross_fit_distances, keep_mask
from pipeline.scoring.fit import fit_inspector, raw_maps

pytestmark = pytest.mark.usefixtures("single_thread")


def naive_cross_fit(feats: torch.Tensor, n_images: int, seed: int) -> torch.Tensor:
    """Each patch's distance to the nearest patch of any image in the other half (the whole half as bank)."""
    p = feats.shape[0] // n_images
    perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed)).tolist()
    half = {img: (0 if pos < n_images // 2 else 1) for pos, img in enumerate(perm)}
    x = feats.double()
    out = torch.empty(feats.shape[0], dtype=torch.float64)
    for i in range(feats.shape[0]):
        others = [j for j in range(feats.shape[0]) if half[j // p] != half[i // p]]
        out[i] = min(float((x[i] - x[j]).norm()) for j in others)
    return out


@pytest.mark.parametrize("n_images,p,d,seed", [(2, 3, 2, 0), (5, 4, 3, 1), (8, 6, 4, 2)])
def test_cross_fit_distances_match_naive(n_images: int, p: int, d: int, seed: int) -> None:
    feats = torch.randn(n_images * p, d, generator=torch.Generator().manual_seed(100 + seed))
    # bank_ratio 1: the coreset is the whole other half, so the distances are exact
    got = cross_fit_distances(feats, n_images, 1.0, 10_000, torch.Generator().manual_seed(seed), proj_dim=0, query_chunk=3)
    torch.testing.assert_close(got.double(), naive_cross_fit(feats, n_images, seed), rtol=1e-4, atol=1e-4)


def test_cross_fit_never_scores_a_patch_against_its_own_image() -> None:
    """A patch repeated within one image only is still far: its copy is in the same half."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6 * 8, 4, generator=g)
    feats[3 * 8 : 3 * 8 + 4] = 50.0  # half of image 3 is one odd patch, four times
    d = cross_fit_distances(feats, 6, 1.0, 10_000, torch.Generator().manual_seed(1), proj_dim=0)
    assert d[24:28].min() > 40 and d[24:28].min() > d[torch.arange(48) // 8 != 3].max()


def test_planted_defect_patches_are_the_ones_dropped() -> None:
    g = torch.Generator().manual_seed(2)
    n, p = 20, 16
    feats = torch.randn(n * p, 4, generator=g)
    defect = [5 * p + 3, 5 * p + 4, 11 * p + 9]  # two images carry unusual patches, each unlike the others
    feats[defect] += torch.tensor([[12.0, -9.0, 7.0, 10.0], [-11.0, 10.0, 9.0, -8.0], [9.0, 12.0, -10.0, -9.0]])
    dist = cross_fit_distances(feats, n, 0.5, 10_000, torch.Generator().manual_seed(0), proj_dim=0)
    keep = keep_mask(dist, 3 / (n * p))
    assert sorted(torch.nonzero(~keep).flatten().tolist()) == defect


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.25, 0.5])
def test_keep_mask_drops_exactly_the_largest(fraction: float) -> None:
    d = torch.rand(400, generator=torch.Generator().manual_seed(3))
    keep = keep_mask(d, fraction)
    k = math.floor(fraction * 400)
    assert int((~keep).sum()) == k
    if k:
        assert d[~keep].min() >= d[keep].max()


def test_config_rejects_bad_fraction() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="denoise_fraction"):
            ScorerConfig(denoise_fraction=bad)


def test_fit_keeps_contaminating_defects_out_of_the_bank(spotted_training_set) -> None:  # noqa: ANN001
    """Two of 24 'good' training images carry spots; test images with spots score (raw distance)
    higher when the fit denoises, and the fit reports how many patches it dropped."""
    enc, images, frames = spotted_training_set
    s = images.shape[-1]
    raw = {}
    for frac in (0.0, 0.01):
        res = fit_inspector(enc, images, ScorerConfig(image_size=s, blur_sigma=2, coreset_ratio=0.1, denoise_fraction=frac),
                            progress=False)
        assert res.n_denoised == math.floor(frac * res.n_patches)
        raw[frac] = res.inspector.reduce(raw_maps(res.inspector, frames))
    assert raw[0.01].mean() > raw[0.0].mean()
