"""Tests for pipeline.metrics: exact metrics against naive reference implementations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import pipeline.metrics as M
from pipeline.metrics import pixel as pixel_mod
from pipeline.metrics.aupro import label_regions

# ----------------------------------------------------------------------------- naive references


def _auroc_naive(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score_defect > score_good) over all pairs, ties counting 0.5."""
    pos = scores[labels == 1][:, None]
    neg = scores[labels == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def _f1_at(labels: np.ndarray, scores: np.ndarray, t: float) -> float:
    """F1 when flagging score >= t."""
    pred = scores >= t
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _aupro_naive(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Threshold-loop AUPRO: one curve point per distinct score (plus +inf), clipped, trapezoid.

    Regions come from scipy.ndimage.label (8-connectivity), independently of the cv2 path.
    """
    regions: list[tuple[int, np.ndarray]] = []  # (image index, bool region [H, W])
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), int))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    neg_scores = maps[~masks]
    thresholds = np.concatenate([[np.inf], np.unique(maps)[::-1]])
    pts = []
    for t in thresholds:
        fpr = float(np.mean(neg_scores >= t))
        pro = float(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))
        pts.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:  # partial segment: interpolate PRO at exactly fpr_limit
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int, n_blobs: int) -> np.ndarray:
    """[n, h, w] bool masks with a few random rectangles (some images left empty)."""
    masks = np.zeros((n, h, w), bool)
    for _ in range(n_blobs):
        i = int(rng.integers(0, max(1, n - 1)))  # the last image stays good
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks[i, y : y + rng.integers(1, h // 3 + 2), x : x + rng.integers(1, w // 3 + 2)] = True
    return masks


# ----------------------------------------------------------------------------- image metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_matches_sklearn_and_pairwise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + labels, 1)  # rounding -> ties
    got = M.image_auroc(labels, scores)
    assert isinstance(got, float)
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got == pytest.approx(_auroc_naive(labels, scores), abs=1e-12)


def test_image_auroc_one_class_raises() -> None:
    with pytest.raises(ValueError, match="one class"):
        M.image_auroc(np.zeros(5, int), np.arange(5.0))
    with pytest.raises(ValueError):
        M.image_auroc(np.array([0, 2]), np.array([0.0, 1.0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_f1_max_matches_threshold_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 50)
    scores = np.round(rng.normal(size=50) + labels, 1)
    f1, thr = M.f1_max(labels, scores)
    naive = max(_f1_at(labels, scores, t) for t in np.unique(scores))
    assert f1 == pytest.approx(naive, abs=1e-12)
    assert _f1_at(labels, scores, thr) == pytest.approx(f1, abs=1e-12)
    assert isinstance(f1, float) and isinstance(thr, float)


def test_rates_at_threshold() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.5, 0.7, 0.2, 0.5, 0.4])
    r = M.rates_at_threshold(labels, scores, 0.5)
    assert r == {"false_alarm_rate": 0.5, "recall": 0.5}  # ties at 0.5 flag
    assert M.rates_at_threshold(np.zeros(3, int), np.arange(3.0), 1.0) == {
        "false_alarm_rate": pytest.approx(2 / 3),
        "recall": None,
    }
    assert M.rates_at_threshold(np.ones(2, int), np.arange(2.0), 1.0)["false_alarm_rate"] is None


def test_per_class_auroc_hand_example() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.2, 0.4, 0.25])
    classes = ["good", "good", "good", "b", "a", "a"]
    got = M.per_class_auroc(labels, scores, classes)
    # a: 0.4 beats 3 goods, 0.25 beats 2 -> 5/6; b: 0.2 beats 0.1, ties 0.2, loses to 0.3 -> 1.5/3.
    assert list(got) == ["a", "b"]
    assert got["a"] == pytest.approx(5 / 6)
    assert got["b"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.per_class_auroc(np.ones(2, int), np.arange(2.0), ["a", "b"])


def test_calibrate_threshold_random_draws_are_valid_and_tightest() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 250))
        target = float(rng.choice([0.0, 0.001, 0.01, 0.05, 0.1, 0.3, 0.5]))
        g = rng.normal(size=n)
        if trial % 3 == 0:
            g = np.round(g, 1)  # heavy ties
        if trial % 4 == 0:
            g = g.astype(np.float32)
        thr = M.calibrate_threshold(g, target)
        assert isinstance(thr, float)
        far = np.mean(g >= thr)
        assert far <= target, (trial, n, target)
        # Even after a cast back to the input dtype, ties must not flag.
        assert np.mean(g >= g.dtype.type(thr)) <= target
        # Tightest: lowering the threshold to the next lower observed score exceeds the target.
        below = g[g < thr]
        if below.size:
            assert np.mean(g >= below.max()) > target, (trial, n, target)
        else:
            assert far <= target  # nothing lower to try


def test_calibrate_threshold_ties_and_errors() -> None:
    thr = M.calibrate_threshold(np.ones(10), 0.05)
    assert thr > 1.0 and thr == np.nextafter(1.0, 2.0)
    assert M.calibrate_threshold(np.arange(100.0), 0.01) == 99.0  # flags exactly 1 of 100
    with pytest.raises(ValueError, match="empty"):
        M.calibrate_threshold(np.array([]), 0.01)
    with pytest.raises(ValueError):
        M.calibrate_threshold(np.ones(3), 1.5)


# ----------------------------------------------------------------------------- pixel metrics


def test_pixel_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 4, 24, 20, 5)
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2).astype(np.float32)
    got = M.pixel_auroc(masks, maps)
    assert got == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    with pytest.raises(ValueError):
        M.pixel_auroc(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError):
        M.pixel_auroc(masks, maps[:, :-1])


def test_pixel_auroc_subsampling_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    masks = _random_masks(rng, 6, 40, 40, 6)
    maps = rng.random(masks.shape) + 0.7 * masks
    full = M.pixel_auroc(masks, maps)
    monkeypatch.setattr(pixel_mod, "MAX_AUROC_PIXELS", 2000)
    a, b = M.pixel_auroc(masks, maps), M.pixel_auroc(masks, maps)
    assert a == b
    assert a == pytest.approx(full, abs=0.05)


# ----------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_naive(seed: int, fpr_limit: float) -> None:
    rng = np.random.default_rng(seed)
    masks = _random_masks(rng, 4, 16, 14, 6)
    # Quantized scores: ties within regions, across regions and with negatives.
    maps = rng.integers(0, 12, masks.shape) / 12 + 0.3 * masks * rng.random(masks.shape)
    maps = np.round(maps, 2)
    got = M.aupro(masks, maps, fpr_limit)
    assert got == pytest.approx(_aupro_naive(masks, maps, fpr_limit), abs=1e-6)


def test_aupro_perfect_and_inverted() -> None:
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 3, 20, 20, 4)
    assert M.aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-9)
    assert M.aupro(masks, (~masks).astype(float)) == pytest.approx(0.0, abs=1e-9)


def test_aupro_random_map_is_about_half_the_limit() -> None:
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 20, 64, 64, 40)
    maps = rng.random(masks.shape)
    assert M.aupro(masks, maps, 0.3) == pytest.approx(0.15, abs=0.02)


def test_aupro_regions_are_8_connected_and_errors() -> None:
    m = np.zeros((1, 5, 5), bool)
    m[0, 1, 1] = m[0, 2, 2] = True  # diagonal neighbours: one region
    m[0, 4, 4] = True
    assert label_regions(m)[1] == 2
    with pytest.raises(ValueError, match="no defect region"):
        M.aupro(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError):
        M.aupro(m, np.zeros((1, 5, 5)), fpr_limit=0.0)


# ----------------------------------------------------------------------------- report


def test_evaluate_predictions_keys_and_json() -> None:
    rng = np.random.default_rng(0)
    n = 8
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    classes = ["good"] * 4 + ["scratch", "scratch", "dent", "dent"]
    scores = rng.random(n).astype(np.float32) + labels
    masks = np.zeros((n, 16, 16), bool)
    masks[4, 2:6, 2:6] = masks[5, 8:12, 1:3] = masks[6, 0:3, 10:15] = True  # image 7: no mask
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    rep = M.evaluate_predictions(labels, scores, classes, masks, maps, threshold=1.0)
    assert set(rep) == {
        "image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold", "per_class", "per_class_pixel",
        "false_alarm_rate", "recall_at_threshold", "threshold", "n_images", "n_good",
        "n_defect", "n_masked",
    }
    assert tuple(rep) == M.REPORT_KEYS
    json.dumps(rep, allow_nan=False)
    assert (rep["n_images"], rep["n_good"], rep["n_defect"], rep["n_masked"]) == (8, 4, 4, 3)
    assert list(rep["per_class"]) == ["dent", "scratch"]
    for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold", "threshold"):
        assert type(rep[k]) is float, k
    assert rep["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert rep["aupro"] == pytest.approx(M.aupro(masks, maps))
    # per class: that class's images plus the good ones (naive reference on the pixel subset)
    for name, rows in {"scratch": [0, 1, 2, 3, 4, 5], "dent": [0, 1, 2, 3, 6, 7]}.items():
        assert rep["per_class_pixel"][name] == pytest.approx(roc_auc_score(masks[rows].ravel(), maps[rows].ravel())), name

    # No masks / good-only: undefined metrics become None, still valid JSON.
    rep2 = M.evaluate_predictions(np.zeros(3, int), np.arange(3.0), ["good"] * 3, None, None, 1.5)
    assert tuple(rep2) == M.REPORT_KEYS
    assert rep2["image_auroc"] is None and rep2["pixel_auroc"] is None and rep2["aupro"] is None
    assert rep2["recall_at_threshold"] is None and rep2["n_masked"] == 0 and rep2["per_class_pixel"] is None
    json.dumps(rep2, allow_nan=False)
    rep3 = M.evaluate_predictions(labels, scores, classes, np.zeros_like(masks), maps, 1.0)
    assert rep3["pixel_auroc"] is None and rep3["n_masked"] == 0


# ----------------------------------------------------------------------------- plots


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_roc_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 10)
    scores = rng.random(20) + labels
    classes = ["good"] * 10 + ["a"] * 5 + ["b"] * 5
    out = M.plot_roc(labels, scores, tmp_path / "sub" / "roc.png", classes=classes, title="t")
    assert out == tmp_path / "sub" / "roc.png" and _is_png(out)
    assert _is_png(M.plot_roc(labels, scores, tmp_path / "roc2.png"))
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["roc.png", "roc2.png"]  # no temp left


def test_heatmap_grid_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    rgb = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    m0 = np.zeros((12, 16), bool)
    m0[3:6, 4:9] = True
    maps = [rng.random((12, 16)).astype(np.float32) * 2, rng.random((32, 32))]
    out = M.heatmap_grid(
        [gray, rgb], maps, [m0, None], [1.7, 0.2], [1, 0], tmp_path / "g" / "grid.png",
        threshold=1.0, titles=["scratch", "good"],
    )
    assert _is_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]
    with pytest.raises(ValueError):
        M.heatmap_grid([gray], maps, [None], [0.1], [0], tmp_path / "bad.png")
