"""Tests for the seeded synthetic surface/defect generator (pipeline.data.synthetic)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data.synthetic import DEFECTS, TEXTURES, add_defect, make_strip, make_surface, write_dataset

SIZE = (96, 128)  # non-square on purpose: catches (H, W) mix-ups


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def test_names() -> None:
    assert {"brushed_metal", "woven_fabric", "wood_grain"} <= set(TEXTURES)
    assert set(DEFECTS) == {"scratch", "crack", "spot", "dent", "contamination", "missing_print"}


@pytest.mark.parametrize("texture", TEXTURES)
def test_surface_shape_determinism_and_variation(texture: str) -> None:
    a = make_surface(_rng(1), texture, SIZE)
    b = make_surface(_rng(1), texture, SIZE)
    c = make_surface(_rng(2), texture, SIZE)
    assert a.dtype == np.uint8 and a.shape == SIZE
    assert a.tobytes() == b.tobytes()
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 2.0  # good parts differ from each other
    # A textured, well-exposed surface: not flat, not clipped.
    assert a.std() > 4.0
    assert 40 < a.mean() < 215
    assert (a == 0).mean() < 0.01 and (a == 255).mean() < 0.01


def test_unknown_names_rejected() -> None:
    with pytest.raises(ValueError):
        make_surface(_rng(0), "marble", SIZE)
    with pytest.raises(ValueError):
        add_defect(_rng(0), make_surface(_rng(0), "tile", SIZE), "hole")


@pytest.mark.parametrize("texture", TEXTURES)
@pytest.mark.parametrize("kind", DEFECTS)
def test_defect_mask_is_exact(texture: str, kind: str) -> None:
    for seed in range(3):
        image = make_surface(_rng(seed, 7), texture, (128, 128))
        before = image.copy()
        new, mask = add_defect(_rng(seed, 8), image, kind)
        assert np.array_equal(image, before), "input must not be modified"
        assert new.dtype == np.uint8 and new.shape == image.shape
        assert mask.dtype == np.bool_ and mask.shape == image.shape
        diff = np.abs(new.astype(int) - image.astype(int))
        # No visible change outside the mask (in fact none at all).
        assert not np.any((diff > 8) & ~mask)
        assert np.all(diff[~mask] == 0)
        frac = mask.mean()
        assert 0 < frac < 0.15, f"{kind}: mask covers {frac:.3f} of the image"
        assert diff[mask].mean() > 2.5, f"{kind}: mean change inside mask {diff[mask].mean():.2f}"
        # Moderate contrast: visible somewhere, but no saturated blobs.
        assert diff.max() >= 12
        assert diff[mask].mean() < 60
        # Fully inside the image: the mask never touches the border.
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_defect_determinism_and_sizes() -> None:
    image = make_surface(_rng(3), "brushed_metal", (256, 256))
    for kind in DEFECTS:
        a, ma = add_defect(_rng(5), image, kind)
        b, mb = add_defect(_rng(5), image, kind)
        assert a.tobytes() == b.tobytes() and np.array_equal(ma, mb)
        c, _ = add_defect(_rng(6), image, kind)
        assert not np.array_equal(a, c)
    # Area defects cover roughly 1-5 % of the frame; line defects are thin.
    for kind in ("spot", "dent", "missing_print"):
        fracs = [add_defect(_rng(s), image, kind)[1].mean() for s in range(6)]
        assert 0.005 < min(fracs) and max(fracs) < 0.07, (kind, fracs)
    for kind in ("scratch", "crack"):
        m = add_defect(_rng(9), image, kind)[1]
        assert m.mean() < 0.04
        ys, xs = np.nonzero(m)
        assert max(np.ptp(ys), np.ptp(xs)) > 40, "line defects are long"


def test_make_strip() -> None:
    strip, mask = make_strip(_rng(4), "woven_fabric", height=64, width=1024, n_defects=4)
    assert strip.shape == mask.shape == (64, 1024)
    assert strip.dtype == np.uint8 and mask.dtype == np.bool_
    assert 0 < mask.mean() < 0.2
    # Defects are spread along the strip: one per quarter.
    for q in range(4):
        assert mask[:, q * 256 : (q + 1) * 256].any()
    again, mask2 = make_strip(_rng(4), "woven_fabric", height=64, width=1024, n_defects=4)
    assert again.tobytes() == strip.tobytes() and np.array_equal(mask, mask2)
    clean, none = make_strip(_rng(4), "brushed_metal", height=32, width=300, n_defects=0)
    assert clean.shape == (32, 300) and not none.any()


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_write_dataset(tmp_path: Path) -> None:
    kw = dict(texture="wood_grain", n_train=4, n_test_good=2, n_test_defect=6, size=64, seed=3)
    out = tmp_path / "ds"
    split_path = write_dataset(out, **kw)
    assert split_path == out / "split.json"
    split = json.loads(split_path.read_text())
    assert isinstance(split["description"], str) and split["description"]
    assert split["train"] == [[f"train/good/{i:03d}.png", None, 0] for i in range(4)]
    good = [r for r in split["test"] if r[2] == 0]
    bad = [r for r in split["test"] if r[2] == 1]
    assert good == [[f"test/good/{i:03d}.png", None, 0] for i in range(2)]
    assert sorted(r[0].split("/")[1] for r in bad) == sorted(DEFECTS)  # evenly spread
    for rel, rel_mask, _ in bad:
        kind, stem = rel.split("/")[1], Path(rel).stem
        assert rel_mask == f"ground_truth/{kind}/{stem}_mask.png"
        img = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        m = cv2.imread(str(out / rel_mask), cv2.IMREAD_UNCHANGED)
        assert img.shape == m.shape == (64, 64) and img.dtype == m.dtype == np.uint8
        assert set(np.unique(m)) == {0, 255}
    for rel, _, _ in split["train"] + good:
        assert cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED).shape == (64, 64)
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"], "temp folders left behind"

    # Cache hit: nothing is rewritten.
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert write_dataset(out, **kw) == split_path
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp

    # Deterministic: same seed elsewhere gives byte-identical files; other params replace.
    other = tmp_path / "ds2"
    write_dataset(other, **kw)
    assert _digest(out) == _digest(other)
    write_dataset(other, **{**kw, "seed": 4})
    assert _digest(out).keys() == _digest(other).keys()
    assert _digest(out) != _digest(other)
    assert json.loads((other / "params.json").read_text())["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ds2"]


def test_write_dataset_refuses_foreign_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_dataset(foreign, n_train=1, n_test_good=1, n_test_defect=1, size=32)
    assert (foreign / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_dataset(empty, n_train=1, n_test_good=0, n_test_defect=0, size=32).is_file()
