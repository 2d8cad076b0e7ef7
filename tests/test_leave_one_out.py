"""Leave-one-image-out threshold calibration (pipeline/scoring/leave_one_out.py, scorer.calibration):
the masked search against a naive reference and its invariants, the fit, fit.json, export and INT8."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.knn import nearest_distance
from pipeline.scoring.leave_one_out import calibration_sample, leave_one_out_distances


def naive_loo(q: torch.Tensor, q_img: torch.Tensor, bank: torch.Tensor, row_img: torch.Tensor) -> torch.Tensor:
    out = []
    for x, i in zip(q, q_img):
        d = [float(torch.linalg.vector_norm(x - b)) for b, r in zip(bank, row_img) if r != i]
        out.append(min(d) if d else float("inf"))
    return torch.tensor(out)


@pytest.mark.parametrize("seed,chunk", [(0, 7), (1, 64), (2, 3)])
def test_distances_match_naive(seed: int, chunk: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, bank = torch.randn(40, 5, generator=g), torch.randn(30, 5, generator=g)
    q_img, row_img = torch.randint(0, 4, (40,), generator=g), torch.randint(0, 4, (30,), generator=g)
    got = leave_one_out_distances(q, q_img, bank, row_img, chunk)
    assert torch.allclose(got, naive_loo(q, q_img, bank, row_img), atol=1e-4)


def test_distances_invariants() -> None:
    g = torch.Generator().manual_seed(3)
    q, bank = torch.randn(50, 6, generator=g), torch.randn(20, 6, generator=g)
    row_img = torch.randint(0, 5, (20,), generator=g)
    plain = nearest_distance(q, bank)
    # queries of an image with no bank rows: the plain nearest-neighbour distance
    assert torch.allclose(leave_one_out_distances(q, torch.full((50,), 99), bank, row_img), plain, atol=1e-4)
    # masking rows can only lengthen the distance
    q_img = torch.randint(0, 5, (50,), generator=g)
    assert (leave_one_out_distances(q, q_img, bank, row_img) >= plain - 1e-5).all()
    # a query that is a copy of a bank row scores 0 plainly, but not against the bank less its own rows
    copy = bank[:1].clone()
    assert float(nearest_distance(copy, bank)) == pytest.approx(0.0, abs=1e-3)
    assert float(leave_one_out_distances(copy, row_img[:1], bank, row_img)) > 0.1
    # every row from the query's own image: nothing left
    assert torch.isinf(leave_one_out_distances(q[:3], torch.zeros(3, dtype=torch.long), bank, torch.zeros(20, dtype=torch.long))).all()


def test_calibration_sample_is_seeded() -> None:
    a = calibration_sample(100, 30, torch.Generator().manual_seed(0))
    assert a.tolist() == calibration_sample(100, 30, torch.Generator().manual_seed(0)).tolist()
    assert len(a) == 30 and a.tolist() == sorted(set(a.tolist())) and int(a.max()) < 100
    assert calibration_sample(100, 30, torch.Generator().manual_seed(1)).tolist() != a.tolist()
    assert calibration_sample(20, 30, torch.Generator()).tolist() == list(range(20))  # fewer images than the cap: all
    assert calibration_sample(20, 0, torch.Generator()).tolist() == list(range(20))  # 0: all


def test_config_rejects_unknown_calibration() -> None:
    with pytest.raises(ValueError, match="calibration must be one of"):
        ScorerConfig(calibration="cross")


@pytest.mark.usefixtures("single_thread")
def test_fit_scores_each_image_against_the_bank_without_its_rows(spotted_training_set) -> None:  # noqa: ANN001
    """Every image feeds the bank; each calibration score equals the image's score from an inspector whose
    bank is the fitted bank less that image's rows; the spotted images (only their own rows cover the spots)
    score highest and the fence sets aside the worst."""
    from pipeline.scoring.fit import fit_inspector
    from pipeline.scoring.inspector import Inspector

    enc, images, _ = spotted_training_set
    cfg = ScorerConfig(image_size=images.shape[-1], blur_sigma=2, coreset_ratio=0.1, calibration="leave_one_out",
                       calibration_images=0, calibration_fence=1.5, seed=1)
    res = fit_inspector(enc, images, cfg, progress=False)
    assert res.n_bank_images == 24 and res.n_holdout_images == 24 == len(res.holdout) == len(res.holdout_scores)
    assert res.row_image is not None and res.row_image.shape == (res.bank_size,) and len(set(res.row_image.tolist())) > 1
    bank = res.inspector.memory_bank
    with torch.no_grad():
        for i, score in zip(res.holdout, res.holdout_scores):
            ref = Inspector(enc, cfg, bank_size=int((res.row_image != i).sum())).eval()
            ref.set_bank(bank[res.row_image != i])
            naive = float(ref.reduce(ref.raw_map(images[i : i + 1].float() / 255.0)))
            assert score == pytest.approx(naive, rel=1e-4), i
    ranked = [i for _, i in sorted(zip(res.holdout_scores, res.holdout), reverse=True)]
    assert set(ranked[:2]) == {4, 17}  # only their own rows covered the spots
    assert res.calibration_outliers and set(res.calibration_outliers) <= {4, 17}  # the fence sets aside the worst
    kept = [sc for i, sc in zip(res.holdout, res.holdout_scores) if i not in res.calibration_outliers]
    assert res.threshold_raw <= max(kept) * (1 + 1e-6)


@pytest.mark.usefixtures("single_thread")
def test_fit_json_export_and_int8_with_leave_one_out(tiny_data: Path, tmp_path: Path) -> None:
    """`loupe fit` records the calibration; export's drift reference is the fit's leave-one-out scores;
    the INT8 re-fit repeats the leave-one-out calibration through the INT8 encoder."""
    from inference.export import export_bundle
    from inference.runtime import BundleInspector
    from pipeline.config import load_config
    from pipeline.steps import fit_step, pretrain_step

    run = tmp_path / "run"
    cfg = load_config("smoke", {"scorer.calibration": "leave_one_out"})
    pretrain_step(tiny_data / "split.json", run, cfg, epochs=0, progress=False)
    fit = fit_step(run, tiny_data / "split.json", progress=False)
    n_train = len(json.loads((tiny_data / "split.json").read_text())["train"])
    assert fit["calibration"] == "leave_one_out" and fit["n_bank_images"] == n_train
    assert fit["n_holdout_images"] == min(n_train, cfg.scorer.calibration_images) == len(fit["holdout_scores"])
    b = tmp_path / "bundle"
    manifest = export_bundle(run, b, precisions=("int8",), data=tiny_data / "split.json", max_batch=8)
    cal = manifest["calibration"]
    assert cal["images"] + cal["set_aside"] == fit["n_holdout_images"]
    assert max(cal["scores"]) <= 0.5 + 1e-4  # few scores: the threshold is the highest kept one
    assert manifest["int8"]["refit"] is True and manifest["int8"]["bank_images"] == n_train
    assert manifest["int8"]["holdout_images"] == fit["n_holdout_images"]
    from pipeline.data.tensors import load_images
    from pipeline.steps import read_samples

    samples, _ = read_samples(tiny_data / "split.json", "test", False, 1)
    frames = load_images(samples, cfg.scorer.image_size, 1).permute(0, 2, 3, 1).contiguous().numpy()
    fp32 = BundleInspector.load(b, runtime="ort-cpu").run(frames)
    int8 = BundleInspector.load(b, runtime="ort-cpu", precision="int8").run(frames)
    assert np.isfinite(int8.score).all()
    assert np.mean(np.asarray(fp32.is_defect) == np.asarray(int8.is_defect)) >= 0.7
