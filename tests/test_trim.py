"""Image-level trimming (pipeline/scoring/denoise.py `image_keep_mask`, scorer.trim_fraction): against a
naive reference, and on a contaminated synthetic training set, where it drops the planted defective images."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.denoise import image_keep_mask
from pipeline.scoring.fit import fit_inspector, raw_maps, split_holdout

pytestmark = pytest.mark.usefixtures("single_thread")


def naive_scores(feats: torch.Tensor, n_images: int, perm: list[int], reference: list[bool]) -> list[float]:
    """Each image's largest distance from one of its patches to the nearest patch of the other half's
    reference images (halves: the two ends of perm; all of the other half when none of it is reference)."""
    p = feats.shape[0] // n_images
    half = {img: (0 if pos < n_images // 2 else 1) for pos, img in enumerate(perm)}
    x = feats.double()
    score = []
    for a in range(n_images):
        other = [b for b in range(n_images) if half[b] != half[a]]
        other = [b for b in other if reference[b]] or other
        rows = [j for b in other for j in range(b * p, (b + 1) * p)]
        score.append(max(min(float((x[i] - x[j]).norm()) for j in rows) for i in range(a * p, (a + 1) * p)))
    return score


def naive_trim(feats: torch.Tensor, n_images: int, fraction: float, seed: int, rounds: int = 1, fence: float = 0.0) -> set[int]:
    """Images to drop: every round draws halves (randperm(seed), all rounds first, as image_keep_mask does),
    scores each image against the other half's images the previous round kept and drops the top share;
    with a fence, the last round drops only top-share images whose log score is above Q3 + fence * IQR."""
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n_images, generator=g).tolist() for _ in range(rounds)]
    keep = [True] * n_images
    k = math.floor(fraction * n_images)
    for perm in perms:
        score = naive_scores(feats, n_images, perm, keep)
        drop = set(sorted(range(n_images), key=lambda a: -score[a])[:k])
        keep = [a not in drop for a in range(n_images)]
    if fence > 0:
        q1, q3 = np.quantile(np.log(score), [0.25, 0.75])
        drop = {a for a in drop if math.log(score[a]) > q3 + fence * (q3 - q1)}
    return drop


@pytest.mark.parametrize("n_images,p,d,fraction,seed", [(4, 3, 2, 0.25, 0), (9, 4, 3, 0.34, 1), (12, 5, 4, 0.5, 2), (6, 2, 2, 0.0, 3)])
def test_image_keep_mask_matches_naive(n_images: int, p: int, d: int, fraction: float, seed: int) -> None:
    feats = torch.randn(n_images * p, d, generator=torch.Generator().manual_seed(200 + seed))
    # bank_ratio 1: the coreset is the whole other half, so the distances are exact
    keep = image_keep_mask(feats, n_images, fraction, 1.0, 10_000, torch.Generator().manual_seed(seed), proj_dim=0)
    assert keep.shape == (n_images,) and keep.dtype == torch.bool
    assert set(torch.nonzero(~keep).flatten().tolist()) == naive_trim(feats, n_images, fraction, seed)


@pytest.mark.parametrize("n_images,p,d,fraction,seed,rounds", [(8, 3, 2, 0.25, 5, 2), (12, 4, 3, 0.34, 6, 3), (10, 2, 2, 0.5, 7, 2)])
def test_iterative_trim_matches_naive(n_images: int, p: int, d: int, fraction: float, seed: int, rounds: int) -> None:
    feats = torch.randn(n_images * p, d, generator=torch.Generator().manual_seed(300 + seed))
    keep = image_keep_mask(feats, n_images, fraction, 1.0, 10_000, torch.Generator().manual_seed(seed), rounds=rounds, proj_dim=0)
    assert set(torch.nonzero(~keep).flatten().tolist()) == naive_trim(feats, n_images, fraction, seed, rounds=rounds)


def test_fenced_trim_matches_naive_and_spares_a_clean_list() -> None:
    g = torch.Generator().manual_seed(9)
    n, p = 24, 4
    feats = torch.randn(n * p, 3, generator=g)
    clean = image_keep_mask(feats, n, 0.25, 1.0, 10_000, torch.Generator().manual_seed(1), fence=3.0, proj_dim=0)
    assert set(torch.nonzero(~clean).flatten().tolist()) == naive_trim(feats, n, 0.25, 1, fence=3.0)
    assert clean.all()  # Gaussian patches: no image is a gross outlier, nothing is dropped
    feats[5 * p + 1] += 40.0  # one grossly odd image among them
    dirty = image_keep_mask(feats, n, 0.25, 1.0, 10_000, torch.Generator().manual_seed(1), fence=3.0, proj_dim=0)
    assert torch.nonzero(~dirty).flatten().tolist() == [5] == sorted(naive_trim(feats, n, 0.25, 1, fence=3.0))


def test_later_rounds_stop_twins_vouching_for_each_other() -> None:
    """Two images share the same odd patch ("twins": one defect kind). When the halves split them, each
    is the other's near neighbour and one round keeps both; rounds with fresh halves, each scored
    against what the previous round kept, catch them once they land together and then keep them out."""
    g = torch.Generator().manual_seed(11)
    n, p = 20, 6
    feats = torch.randn(n * p, 4, generator=g)
    feats[3 * p + 2] += 12.0
    feats[14 * p + 0] = feats[3 * p + 2] + 0.05  # the same defect patch in another image
    seed = next(s for s in range(100)  # a seed whose first halves split the twins
                if len({pos < n // 2 for pos, img in enumerate(torch.randperm(n, generator=torch.Generator().manual_seed(s)).tolist())
                        if img in (3, 14)}) == 2)
    one = image_keep_mask(feats, n, 0.1, 1.0, 10_000, torch.Generator().manual_seed(seed), proj_dim=0)
    assert one[3] and one[14]
    many = image_keep_mask(feats, n, 0.1, 1.0, 10_000, torch.Generator().manual_seed(seed), rounds=8, proj_dim=0)
    assert torch.nonzero(~many).flatten().tolist() == [3, 14]


@pytest.mark.parametrize("score", ["cross_fit", "leave_one_out"])
def test_one_odd_patch_condemns_its_whole_image(score: str) -> None:
    """Trimming ranks images by their worst patch: one far-out patch in an otherwise normal image is enough,
    with either ranking (leave-one-out here with the worst patch as the image score)."""
    g = torch.Generator().manual_seed(4)
    n, p = 20, 16
    feats = torch.randn(n * p, 4, generator=g)
    feats[7 * p + 5] += 15.0
    feats[13 * p + 0] -= 15.0
    to_scores = (lambda dist: dist.flatten(1).amax(dim=1)) if score == "leave_one_out" else None
    keep = image_keep_mask(feats, n, 0.1, 0.5, 10_000, torch.Generator().manual_seed(0), to_scores=to_scores, proj_dim=0)
    assert torch.nonzero(~keep).flatten().tolist() == [7, 13]


def naive_loo_trim(feats: torch.Tensor, n_images: int, fraction: float, rounds: int) -> set[int]:
    """Leave-one-out ranking with the whole bank (bank_ratio 1): each image's worst patch distance to the
    patches of the other images the previous round kept; the top share is dropped every round."""
    p = feats.shape[0] // n_images
    x = feats.double()
    keep = [True] * n_images
    k = math.floor(fraction * n_images)
    for _ in range(rounds):
        score = []
        for a in range(n_images):
            rows = [j for b in range(n_images) if b != a and keep[b] for j in range(b * p, (b + 1) * p)]
            score.append(max(min(float((x[i] - x[j]).norm()) for j in rows) for i in range(a * p, (a + 1) * p)))
        drop = set(sorted(range(n_images), key=lambda a: -score[a])[:k])
        keep = [a not in drop for a in range(n_images)]
    return drop


@pytest.mark.parametrize("n_images,p,d,fraction,seed,rounds", [(6, 3, 2, 0.34, 0, 1), (10, 4, 3, 0.2, 1, 1), (12, 3, 2, 0.25, 2, 3)])
def test_leave_one_out_trim_matches_naive(n_images: int, p: int, d: int, fraction: float, seed: int, rounds: int) -> None:
    """trim_score leave_one_out with the worst patch as the image score (to_scores = amax) against the naive reference."""
    feats = torch.randn(n_images * p, d, generator=torch.Generator().manual_seed(400 + seed))
    keep = image_keep_mask(feats, n_images, fraction, 1.0, 10_000, torch.Generator().manual_seed(seed), rounds=rounds,
                           to_scores=lambda dist: dist.flatten(1).amax(dim=1), proj_dim=0)
    assert set(torch.nonzero(~keep).flatten().tolist()) == naive_loo_trim(feats, n_images, fraction, rounds)


def test_config_rejects_bad_trim_settings() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="trim_fraction"):
            ScorerConfig(trim_fraction=bad)
    with pytest.raises(ValueError, match="trim_rounds"):
        ScorerConfig(trim_rounds=0)
    with pytest.raises(ValueError, match="trim_fence"):
        ScorerConfig(trim_fence=-1.0)
    with pytest.raises(ValueError, match="trim_score"):
        ScorerConfig(trim_score="half")


def test_fit_trims_the_contaminating_images(spotted_training_set) -> None:  # noqa: ANN001
    """Two of 24 'good' training images (4 and 17) carry spots; trimming 2 bank images drops exactly the
    spotted ones that went to the bank, the bank keeps the rest, and spotted test frames score higher."""
    enc, images, frames = spotted_training_set
    s = images.shape[-1]
    bank_idx, _ = split_holdout(images.shape[0], ScorerConfig().holdout_fraction, torch.Generator().manual_seed(0))
    spotted_in_bank = {4, 17} & set(bank_idx.tolist())
    assert spotted_in_bank, "fixture: a spotted image should reach the bank"
    raw, res = {}, {}
    for frac in (0.0, len(spotted_in_bank) / len(bank_idx)):
        res[frac] = fit_inspector(enc, images, ScorerConfig(image_size=s, blur_sigma=2, coreset_ratio=0.1, trim_fraction=frac),
                                  progress=False)
        raw[frac] = res[frac].inspector.reduce(raw_maps(res[frac].inspector, frames))
    plain, trimmed = res[0.0], res[frac]
    assert plain.trimmed == [] and plain.n_bank_images == len(bank_idx)
    assert set(trimmed.trimmed) == spotted_in_bank
    assert trimmed.n_bank_images == len(bank_idx) - len(spotted_in_bank)
    assert trimmed.n_patches == plain.n_patches  # counted before any trimming
    assert plain.filter_seconds == 0 < trimmed.filter_seconds  # the trim's cross-fit is booked apart from feature extraction
    assert trimmed.feature_seconds + trimmed.filter_seconds + trimmed.coreset_seconds <= trimmed.seconds
    assert raw[frac].mean() > raw[0.0].mean()


def test_fit_trims_the_contaminating_images_by_leave_one_out_scores(spotted_training_set) -> None:  # noqa: ANN001
    """The same with trim_score leave_one_out and leave-one-out calibration (every image in the bank): exactly
    the two spotted images go."""
    enc, images, _ = spotted_training_set
    s = images.shape[-1]
    res = fit_inspector(enc, images, ScorerConfig(image_size=s, blur_sigma=2, coreset_ratio=0.1, calibration="leave_one_out",
                                                  trim_fraction=2 / images.shape[0], trim_score="leave_one_out"), progress=False)
    assert sorted(res.trimmed) == [4, 17]
    assert res.n_bank_images == images.shape[0] - 2 and not {4, 17} & set(res.holdout)


def test_int8_refit_refuses_a_trimmed_bank(tmp_path) -> None:  # noqa: ANN001
    from inference.export import ExportError, refit_int8
    from models.encoder import Encoder, EncoderConfig
    from pipeline.scoring.inspector import Inspector

    enc = Encoder(EncoderConfig(arch="resnet18", in_channels=1, taps=("layer1",), mean=(0.5,), std=(0.25,)))
    insp = Inspector(enc, ScorerConfig(image_size=32, trim_fraction=0.1), bank_size=4)
    with pytest.raises(ExportError, match="trim_fraction 0.1"):
        refit_int8(tmp_path / "model.int8.onnx", insp, np.zeros((4, 32, 32, 1), dtype=np.uint8))


def test_fit_json_names_the_trimmed_images(tiny_data, tmp_path) -> None:  # noqa: ANN001
    """`loupe fit` with scorer.trim_fraction writes how many bank images it trimmed and which files they are."""
    import json

    import yaml

    from pipeline.steps import fit_step, pretrain_step

    run = tmp_path / "run"
    pretrain_step(tiny_data / "split.json", run, config="smoke", epochs=1, progress=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["scorer"]["trim_fraction"] = 0.25
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = fit_step(run, tiny_data / "split.json", progress=False)
    fit = json.loads((run / "fit.json").read_text())
    assert fit["n_trimmed"] == len(fit["trimmed_images"]) == summary["n_trimmed"] > 0
    n_before = fit["n_bank_images"] + fit["n_trimmed"]
    assert fit["n_trimmed"] == math.floor(0.25 * n_before)
    assert all(Path(p).is_file() for p in fit["trimmed_images"]) and len(set(fit["trimmed_images"])) == fit["n_trimmed"]
    assert fit["filter_seconds"] > 0
