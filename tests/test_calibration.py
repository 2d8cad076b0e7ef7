"""Threshold calibration that survives defective held-out images (pipeline/metrics/calibration.py,
scorer.calibration_fence): the fence against a naive reference and its invariants, and in the fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.metrics import calibrate_threshold, calibration_outliers, robust_threshold
from pipeline.scoring.config import ScorerConfig


def naive_outliers(scores: list[float], fence: float) -> list[bool]:
    """Upper Tukey fence on log scores, quartiles by linear interpolation between order statistics."""
    logs = sorted(math.log(s) for s in scores)

    def quantile(q: float) -> float:
        pos = q * (len(logs) - 1)
        lo = math.floor(pos)
        return logs[lo] + (pos - lo) * (logs[min(lo + 1, len(logs) - 1)] - logs[lo])

    q1, q3 = quantile(0.25), quantile(0.75)
    return [math.log(s) > q3 + fence * (q3 - q1) for s in scores]


@pytest.mark.parametrize("seed,m,fence", [(0, 8, 1.5), (1, 30, 3.0), (2, 76, 3.0), (3, 200, 1.0), (4, 50, 6.0)])
def test_outliers_match_naive(seed: int, m: int, fence: float) -> None:
    rng = np.random.default_rng(seed)
    scores = np.exp(rng.normal(0.0, 0.3, m))
    scores[rng.choice(m, size=max(1, m // 20), replace=False)] *= rng.uniform(1.5, 4.0)  # a few defects among the good
    assert calibration_outliers(scores, fence).tolist() == naive_outliers(scores.tolist(), fence)


def test_outliers_invariants() -> None:
    rng = np.random.default_rng(5)
    scores = np.exp(rng.normal(1.0, 0.2, 80))
    scores[[3, 40]] *= 5.0
    out = calibration_outliers(scores, 3.0)
    assert out.dtype == bool and out.shape == (80,)
    assert out[[3, 40]].all() and out.sum() == 2  # the planted defects, nothing else
    assert (calibration_outliers(scores * 1e3, 3.0) == out).all()  # scale does not matter (logs)
    assert not calibration_outliers(scores, 0.0).any()  # 0: off
    assert not calibration_outliers(scores[:7], 0.1).any()  # too few scores for quartiles
    # a Tukey fence never sets aside more than the quarter above Q3, however low it is
    assert calibration_outliers(np.exp(rng.normal(0, 1, 100)), 1e-9).sum() <= 25
    # fewer outliers as the fence widens
    counts = [int(calibration_outliers(scores, k).sum()) for k in (0.5, 1.5, 3.0, 10.0)]
    assert counts == sorted(counts, reverse=True)
    with_zero = np.concatenate([[0.0], scores])  # an exact copy of a bank image scores 0: no -inf, no crash
    assert not calibration_outliers(with_zero, 3.0)[0]
    with pytest.raises(ValueError, match="NaN or infinite"):
        calibration_outliers(np.array([1.0] * 9 + [np.nan]), 3.0)


def test_robust_threshold_ignores_planted_defects() -> None:
    rng = np.random.default_rng(6)
    good = np.exp(rng.normal(0.0, 0.15, 76)).astype(np.float32)
    held = np.concatenate([good, np.float32([4.0, 6.0, 9.0, 3.5])])  # four defective "good" images held out
    thr, drop = robust_threshold(held, 0.01, 3.0)
    assert drop.tolist() == [False] * 76 + [True] * 4
    assert thr == calibrate_threshold(good, 0.01) and thr <= good.max() * (1 + 1e-6)
    assert robust_threshold(held, 0.01, 0.0)[0] == calibrate_threshold(held, 0.01) > 3.0  # off: the defects set it
    assert robust_threshold(good, 0.01, 3.0)[0] == calibrate_threshold(good, 0.01)  # clean: unchanged


def test_config_rejects_negative_fence() -> None:
    with pytest.raises(ValueError, match="calibration_fence"):
        ScorerConfig(calibration_fence=-1.0)


@pytest.mark.usefixtures("single_thread")
def test_fit_sets_aside_the_defective_held_out_images(spotted_training_set) -> None:  # noqa: ANN001
    """Half the 24 training images held out, two of them spotted: with the fence the spotted ones do not
    set the threshold, the fit names them, and the threshold is the clean held-out images' quantile."""
    from pipeline.scoring.fit import fit_inspector, split_holdout

    enc, images, _ = spotted_training_set
    cfg = dict(image_size=images.shape[-1], blur_sigma=2, coreset_ratio=0.1, holdout_fraction=0.5, seed=1)
    _, hold_idx = split_holdout(images.shape[0], 0.5, torch.Generator().manual_seed(1))
    assert {4, 17} <= set(hold_idx.tolist()), "fixture: both spotted images should be held out with seed 1"
    plain = fit_inspector(enc, images, ScorerConfig(**cfg), progress=False)
    fenced = fit_inspector(enc, images, ScorerConfig(**cfg, calibration_fence=1.5), progress=False)
    assert plain.calibration_outliers == [] and sorted(fenced.calibration_outliers) == [4, 17]
    assert fenced.holdout_scores == plain.holdout_scores  # same bank, same scores: only the calibration differs
    scores = np.asarray(plain.holdout_scores, dtype=np.float32)
    clean = scores[[i not in (4, 17) for i in hold_idx.tolist()]]
    assert fenced.threshold_raw == calibrate_threshold(clean, 0.01) < plain.threshold_raw
    assert float(fenced.inspector.threshold_raw) == pytest.approx(fenced.threshold_raw)


def test_fit_json_names_the_calibration_outliers(tiny_data, tmp_path) -> None:  # noqa: ANN001
    """`loupe fit` with scorer.calibration_fence records how many held-out images it set aside and which files."""
    import json
    from pathlib import Path

    import yaml

    from pipeline.steps import fit_step, pretrain_step

    run = tmp_path / "run"
    pretrain_step(tiny_data / "split.json", run, config="smoke", epochs=1, progress=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["scorer"].update(calibration_fence=0.01, holdout_fraction=0.5)  # a fence this low sets aside the top of 12 scores
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    fit_step(run, tiny_data / "split.json", progress=False)
    fit = json.loads((run / "fit.json").read_text())
    assert fit["n_calibration_outliers"] == len(fit["calibration_outliers"]) > 0
    train = {str((tiny_data / r[0]).resolve()) for r in json.loads((tiny_data / "split.json").read_text())["train"]}
    assert {str(Path(p).resolve()) for p in fit["calibration_outliers"]} <= train
    held = fit["holdout_scores"]  # every held-out image with its raw score, highest first
    assert len(held) == fit["n_holdout_images"] and [h["score"] for h in held] == sorted((h["score"] for h in held), reverse=True)
    assert {h["image"] for h in held[: fit["n_calibration_outliers"]]} == set(fit["calibration_outliers"])
    assert held[fit["n_calibration_outliers"]]["score"] < fit["threshold_raw"]  # the highest kept score is not flagged
    # the set-aside images are flagged at the threshold they did not set
    assert fit["holdout_false_alarm_rate"] >= fit["n_calibration_outliers"] / fit["n_holdout_images"]


def test_cli_fit_summary_points_at_the_suspect_images(capsys, tmp_path) -> None:  # noqa: ANN001
    from flows.cli import _echo_fit

    summary = {"n_images": 100, "n_bank_images": 80, "n_holdout_images": 10, "bank_size": 500, "n_patches": 5000,
               "threshold_raw": 1.5, "seconds": 2.0, "n_trimmed": 0, "n_calibration_outliers": 2}
    _echo_fit(summary, tmp_path)
    out = capsys.readouterr().out
    assert "2 held-out images looked defective and did not set the threshold: fit.json calibration_outliers" in out
    assert "trimmed_images" not in out  # nothing trimmed, nothing said


@pytest.mark.usefixtures("single_thread")
def test_drift_reference_leaves_out_the_set_aside_images(spotted_training_set, tmp_path) -> None:  # noqa: ANN001
    """bundle.json `calibration` (drift watch's reference of good scores) drops the held-out images the fence set aside."""
    import cv2

    from inference.export import calibration_scores
    from pipeline.scoring.fit import fit_inspector

    enc, images, _ = spotted_training_set
    folder = tmp_path / "train"
    folder.mkdir()
    for i, img in enumerate(images[:, 0].numpy()):  # sorted names keep the fixture's order, so the split is the same
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), img)
    cfg = dict(image_size=images.shape[-1], blur_sigma=2, coreset_ratio=0.1, holdout_fraction=0.5, seed=1)
    res = {fence: fit_inspector(enc, images, ScorerConfig(**cfg, calibration_fence=fence), progress=False) for fence in (0.0, 1.5)}
    cal = {fence: calibration_scores(r.inspector, folder, images.shape[-1], 1) for fence, r in res.items()}
    assert cal[0.0]["images"] == 12 and cal[0.0]["set_aside"] == 0
    assert cal[1.5]["images"] == 10 and cal[1.5]["set_aside"] == len(res[1.5].calibration_outliers) == 2
    # what is left is the good held-out images, which the threshold (normalized to 0.5) sits just above
    assert max(cal[1.5]["scores"]) <= 0.5 + 1e-4
