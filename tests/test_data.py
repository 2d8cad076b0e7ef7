"""Tests for pipeline.data: image/mask reading, sources, readability checks, fingerprints."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data import (
    IMAGE_EXTENSIONS,
    DataError,
    Sample,
    check_readable,
    fingerprint,
    load_samples,
    read_image,
    read_mask,
    write_image_atomic,
)

MT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/magnetic-tile-defects"


def _write(path: Path, image: np.ndarray) -> Path:
    """Write with plain cv2 (BGR convention), independent of the code under test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def _gray(h: int = 6, w: int = 8, value: int | None = None) -> np.ndarray:
    if value is not None:
        return np.full((h, w), value, np.uint8)
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 5 % 256).astype(np.uint8)


# ----------------------------------------------------------------------------- read_image


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_read_gray_8bit_lossless(tmp_path: Path, ext: str) -> None:
    image = _gray()
    path = _write(tmp_path / f"g{ext}", image)
    gray = read_image(path)
    assert gray.dtype == np.uint8 and gray.shape == (6, 8)
    np.testing.assert_array_equal(gray, image)
    rgb = read_image(path, channels=3)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], image)


def test_read_gray_jpg(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.jpg", _gray(16, 16, value=100))
    gray = read_image(path)
    assert gray.dtype == np.uint8 and gray.shape == (16, 16)
    assert abs(int(gray.mean()) - 100) <= 2


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_read_gray_16bit_scaled(tmp_path: Path, ext: str) -> None:
    image = np.array([[0, 257, 65535, 128 * 257]], np.uint16)
    path = _write(tmp_path / f"g16{ext}", image)
    gray = read_image(path)
    assert gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, [[0, 1, 255, 128]])


def test_read_16bit_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((2, 3, 3), np.uint16)
    bgr[:, :, 2] = 65535  # red
    rgb = read_image(_write(tmp_path / "c16.png", bgr), channels=3)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert (rgb[:, :, 0] == 255).all() and (rgb[:, :, 1:] == 0).all()


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".jpg"])
def test_read_color_as_rgb_and_gray(tmp_path: Path, ext: str) -> None:
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[:, :, 2] = 200  # red in BGR
    path = _write(tmp_path / f"c{ext}", bgr)
    rgb = read_image(path, channels=3)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    tol = 8 if ext == ".jpg" else 0
    assert abs(int(rgb[8, 8, 0]) - 200) <= tol and int(rgb[8, 8, 2]) <= tol
    gray = read_image(path)
    assert gray.shape == (16, 16)
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[8, 8]
    assert abs(int(gray[8, 8]) - int(expected)) <= tol + 1


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_read_rgba_drops_alpha(tmp_path: Path, ext: str) -> None:
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[:, :, 0] = 50  # blue
    bgra[:, :, 3] = 0  # fully transparent: alpha must not leak into the pixels
    path = _write(tmp_path / f"a{ext}", bgra)
    rgb = read_image(path, channels=3)
    assert rgb.shape == (4, 5, 3)
    assert (rgb[:, :, 2] == 50).all() and (rgb[:, :, :2] == 0).all()
    assert read_image(path).shape == (4, 5)


def test_read_non_ascii_path(tmp_path: Path) -> None:
    folder = tmp_path / "bild_ü"
    folder.mkdir()
    path = folder / "früh.png"
    ok, buf = cv2.imencode(".png", _gray())
    assert ok
    path.write_bytes(buf.tobytes())
    np.testing.assert_array_equal(read_image(path), _gray())


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match="junk.png"):
        read_image(junk)


# ----------------------------------------------------------------------------- read_mask / write


def test_read_mask_binarizes_and_checks_size(tmp_path: Path) -> None:
    raw = np.array([[0, 127, 128, 255]], np.uint8)
    path = _write(tmp_path / "m.png", raw)
    mask = read_mask(path, (1, 4))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, [[False, False, True, True]])
    assert not read_mask(None, (3, 2)).any() and read_mask(None, (3, 2)).shape == (3, 2)

    color = np.zeros((1, 3, 3), np.uint8)
    color[0, 1, 1] = 200  # only green on
    np.testing.assert_array_equal(read_mask(_write(tmp_path / "c.png", color), (1, 3)), [[False, True, False]])

    with pytest.raises(DataError, match="m.png") as info:
        read_mask(path, (2, 4), image_path=tmp_path / "img.png")
    assert "4x1" in str(info.value) and "4x2" in str(info.value) and "img.png" in str(info.value)


def test_write_image_atomic_roundtrip_no_temp(tmp_path: Path) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[:, :, 0] = 255
    target = tmp_path / "deep" / "er" / "out.png"
    write_image_atomic(target, rgb)
    np.testing.assert_array_equal(read_image(target, channels=3), rgb)
    write_image_atomic(target, _gray(3, 4))  # overwrite in place
    np.testing.assert_array_equal(read_image(target), _gray(3, 4))
    write_image_atomic(tmp_path / "mask.png", np.eye(3, dtype=bool))
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png", (3, 3)), np.eye(3, dtype=bool))
    assert sorted(os.listdir(target.parent)) == ["out.png"]
    with pytest.raises(DataError, match="out.xyz"):
        write_image_atomic(tmp_path / "out.xyz", rgb)
    assert sorted(os.listdir(tmp_path)) == ["deep", "mask.png"]


# ----------------------------------------------------------------------------- folders / MVTec


def test_plain_folder_recursive_all_extensions(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    names = [f"sub{i % 2}/img{i}{ext.upper() if i % 2 else ext}" for i, ext in enumerate(IMAGE_EXTENSIONS)]
    for name in names:
        _write(root / name, _gray())
    _write(root / "a_mask.png", _gray())  # not ignored: plain folders drop nothing
    (root / "notes.txt").write_text("not an image")
    samples = load_samples(root, "train")
    rel = [s.image.relative_to(root).as_posix() for s in samples]
    assert rel == sorted(names + ["a_mask.png"])
    assert all(s.image.is_absolute() and s.label is None and s.mask is None and s.defect_class is None for s in samples)
    assert load_samples(str(root), "all") == samples
    with pytest.raises(DataError, match="labels"):
        load_samples(root, "test")


def test_empty_or_missing_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_samples(tmp_path / "empty", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "nope", "train")
    with pytest.raises(ValueError):
        load_samples(tmp_path / "empty", "val")  # type: ignore[arg-type]


def _mvtec(root: Path) -> Path:
    for i in range(2):
        _write(root / "train/good" / f"{i:03d}.png", _gray())
    _write(root / "test/good/000.png", _gray())
    _write(root / "test/scratch/000.png", _gray())
    _write(root / "test/scratch/001.png", _gray())
    _write(root / "ground_truth/scratch/000_mask.png", _gray(value=255))
    return root


def test_mvtec_layout(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "bottle")
    train = load_samples(root, "train")
    assert [(s.image.name, s.label, s.defect_class, s.mask) for s in train] == [
        ("000.png", 0, "good", None),
        ("001.png", 0, "good", None),
    ]
    test = load_samples(root, "test")
    assert [(s.image.relative_to(root).as_posix(), s.label, s.defect_class) for s in test] == [
        ("test/good/000.png", 0, "good"),
        ("test/scratch/000.png", 1, "scratch"),
        ("test/scratch/001.png", 1, "scratch"),
    ]
    assert test[0].mask is None
    assert test[1].mask == root / "ground_truth/scratch/000_mask.png"
    assert test[2].mask is None  # no mask: still a defect, image-level label only
    assert load_samples(root, "all") == train + test


def test_mvtec_stray_train_defect_is_an_error(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "bottle")
    _write(root / "train/scratch/x.png", _gray())
    with pytest.raises(DataError, match="x.png"):
        load_samples(root, "train")


# ----------------------------------------------------------------------------- manifests


def _files(root: Path) -> None:
    _write(root / "good/a.png", _gray())
    _write(root / "good/b.png", _gray(value=7))
    _write(root / "MT_Crack/Imgs/c.jpg", _gray())
    _write(root / "MT_Crack/Imgs/c.png", _gray(value=255))
    _write(root / "d.png", _gray())


def test_json_list_manifest(tmp_path: Path) -> None:
    _files(tmp_path)
    rows = [
        ["good/a.png", None, 0],
        ["good/b.png", "", False],
        ["MT_Crack/Imgs/c.jpg", "MT_Crack/Imgs/c.png", 1],
        [str(tmp_path / "d.png"), None, "1", "dent"],
        {"image": "d.png", "mask": None, "label": True},
    ]
    manifest = tmp_path / "list.json"
    manifest.write_text(json.dumps(rows))
    samples = load_samples(manifest, "test")
    assert [(s.label, s.defect_class) for s in samples] == [(0, "good"), (0, "good"), (1, "MT_Crack"), (1, "dent"), (1, "defect")]
    assert samples[0].image == tmp_path / "good/a.png" and samples[0].mask is None
    assert samples[1].mask is None
    assert samples[2].mask == tmp_path / "MT_Crack/Imgs/c.png"
    assert load_samples(manifest, "all") == samples
    with pytest.raises(DataError, match=r"3 defect rows.*row 3"):
        load_samples(manifest, "train")
    manifest.write_text(json.dumps(rows[:2]))
    assert len(load_samples(manifest, "train")) == 2


def test_json_object_manifest(tmp_path: Path) -> None:
    _files(tmp_path)
    manifest = tmp_path / "split.json"
    manifest.write_text(json.dumps({
        "description": "ignored",
        "train": [["good/a.png", None, 0]],
        "test": [["good/b.png", None, 0], {"image": "MT_Crack/Imgs/c.jpg", "mask": "MT_Crack/Imgs/c.png", "label": 1, "class": "crack"}],
    }))
    train = load_samples(manifest, "train")
    test = load_samples(manifest, "test")
    assert [s.image.name for s in train] == ["a.png"]
    assert [(s.image.name, s.label, s.defect_class) for s in test] == [("b.png", 0, "good"), ("c.jpg", 1, "crack")]
    assert load_samples(manifest, "all") == train + test

    manifest.write_text(json.dumps({"train": [["MT_Crack/Imgs/c.jpg", None, 1]], "test": []}))
    with pytest.raises(DataError, match="train row 1"):
        load_samples(manifest, "train")
    with pytest.raises(DataError, match="no images found"):
        load_samples(manifest, "test")


def test_csv_manifest(tmp_path: Path) -> None:
    _files(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,mask,label,split,class\n"
        "good/a.png,,0,train,\n"
        "good/b.png,,0,test,\n"
        "MT_Crack/Imgs/c.jpg,MT_Crack/Imgs/c.png,1,test,\n"
        "d.png,,1,test,dent\n"
    )
    assert [s.image.name for s in load_samples(manifest, "train")] == ["a.png"]
    test = load_samples(manifest, "test")
    assert [(s.image.name, s.mask.name if s.mask else None, s.label, s.defect_class) for s in test] == [
        ("b.png", None, 0, "good"),
        ("c.jpg", "c.png", 1, "MT_Crack"),
        ("d.png", None, 1, "dent"),
    ]
    assert len(load_samples(manifest, "all")) == 4

    manifest.write_text("image,mask,label,split\ngood/a.png,,0,train\nd.png,,1,train\n")
    with pytest.raises(DataError, match="line 3"):
        load_samples(manifest, "train")
    manifest.write_text("image,mask,label,split\ngood/a.png,,2,test\n")
    with pytest.raises(DataError, match=r"line 2.*label"):
        load_samples(manifest, "test")
    manifest.write_text("image,label\ngood/a.png,0\n")
    with pytest.raises(DataError, match="lacks columns"):
        load_samples(manifest, "test")


def test_manifest_missing_files_listed_together(tmp_path: Path) -> None:
    _files(tmp_path)
    rows = [["good/a.png", None, 0]] + [[f"gone/{i}.png", None, 1] for i in range(25)] + [["good/b.png", "gone/m.png", 0]]
    manifest = tmp_path / "list.json"
    manifest.write_text(json.dumps(rows))
    with pytest.raises(DataError) as info:
        load_samples(manifest, "test")
    message = str(info.value)
    assert "26 missing files" in message and "gone/0.png" in message and "gone/19.png" in message
    assert "gone/24.png" not in message and "6 more" in message


def test_manifest_bad_rows(tmp_path: Path) -> None:
    _files(tmp_path)
    manifest = tmp_path / "bad.json"
    for rows, pattern in [
        ([["good/a.png", None, 2]], "row 1.*label"),
        ([["good/a.png", None]], "row 1"),
        ([{"image": "good/a.png", "label": 0, "msk": "x"}], "unknown keys"),
        ([["good/a.png", None, 0, "scratch"]], "class"),
    ]:
        manifest.write_text(json.dumps(rows))
        with pytest.raises(DataError, match=pattern):
            load_samples(manifest, "test")
    manifest.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_samples(manifest, "test")


# ----------------------------------------------------------------------------- check_readable


def test_check_readable_corrupt_and_skip(tmp_path: Path) -> None:
    good = Sample(_write(tmp_path / "ok.png", _gray()), None, 0, "good")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(1).bytes(500))
    bad = Sample(corrupt, None, 0, "good")
    samples = [good, bad]
    with pytest.raises(DataError, match=r"corrupt\.png[\s\S]*--skip-bad"):
        check_readable(samples)
    with pytest.warns(UserWarning, match="corrupt.png"):
        assert check_readable(samples, skip_bad=True) == [good]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_readable([good], channels=3) == [good]


def test_check_readable_mask_size_mismatch(tmp_path: Path) -> None:
    image = _write(tmp_path / "img.png", _gray(6, 8))
    mask = _write(tmp_path / "img_mask.png", _gray(5, 8))
    with pytest.raises(DataError, match="img_mask.png"):
        check_readable([Sample(image, mask, 1, "x")])


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint(tmp_path: Path) -> None:
    a = Sample(_write(tmp_path / "a.png", _gray()), None, 0, "good")
    b = Sample(_write(tmp_path / "b.png", _gray(value=3)), _write(tmp_path / "b_mask.png", _gray(value=255)), 1, "x")
    first = fingerprint([a, b])
    assert len(first) == 64 and int(first, 16) >= 0
    assert fingerprint([b, a]) == first
    assert fingerprint([a, Sample(b.image, b.mask, 0, "good")]) != first
    assert fingerprint([a, Sample(b.image, None, 1, "x")]) != first
    raw = bytearray(a.image.read_bytes())
    raw[-1] ^= 1
    a.image.write_bytes(bytes(raw))
    assert fingerprint([a, b]) != first
    # A moved copy of the same files hashes the same.
    moved = tmp_path / "copy"
    moved.mkdir()
    for p in (a.image, b.image, b.mask):
        assert p is not None
        (moved / p.name).write_bytes(p.read_bytes())
    same = [Sample(moved / "a.png", None, 0, "good"), Sample(moved / "b.png", moved / "b_mask.png", 1, "x")]
    assert fingerprint(same) == fingerprint([a, b])


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_magnetic_tile_split() -> None:
    manifest = MT_ROOT / "split.json"
    if not manifest.is_file():
        pytest.skip(f"{MT_ROOT} not present")
    train = load_samples(manifest, "train")
    test = load_samples(manifest, "test")
    assert len(train) == 762 and len(test) == 582
    assert all(s.label == 0 and s.defect_class == "good" for s in train)
    assert sum(s.label == 1 for s in test) == 392
    classes = {s.defect_class for s in test}
    assert classes == {"MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven", "good"}
    picks = [train[0], test[0]] + [next(s for s in test if s.defect_class == c) for c in sorted(classes - {"good"})]
    assert check_readable(picks) == picks
    for sample in picks:
        image = read_image(sample.image)
        mask = read_mask(sample.mask, image.shape)
        assert image.dtype == np.uint8 and image.ndim == 2 and mask.shape == image.shape
        if sample.label == 1 and sample.defect_class != "MT_Uneven":  # 4 Uneven masks are empty
            assert mask.any()
