"""Feedback manifests: round trip, relative paths, samples for training/evaluation, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data import DataError
from pipeline.data.feedback import (
    DEFAULT_DEFECT_CLASS, FEEDBACK_FORMAT, FeedbackItem, feedback_provenance, feedback_samples, read_feedback, write_feedback,
)


@pytest.fixture()
def images(tiny_data: Path) -> list[Path]:
    return sorted((tiny_data / "test" / "good").glob("*.png"))[:2] + sorted((tiny_data / "test" / "scratch").glob("*.png"))[:2]


def test_round_trip_and_samples(images: list[Path], tmp_path: Path) -> None:
    items = [
        FeedbackItem(image=str(images[0]), verdict="false_alarm", record_id="r1", station="s1", model_version="abc", score=0.61,
                     reviewer="ann", reviewed_at="2026-01-02T03:04:05+00:00"),
        FeedbackItem(image=images[1], verdict="false_alarm", reviewer="ann"),
        FeedbackItem(image=str(images[2]), verdict="defect", defect_class="scratch", reviewer="bo", comment="clear"),
        FeedbackItem(image=str(images[3]), verdict="defect", reviewer="bo"),
    ]
    path = write_feedback(tmp_path / "fb" / "feedback.json", items, product="lineA")
    doc = json.loads(path.read_text())
    assert doc["format"] == FEEDBACK_FORMAT and doc["version"] == 1 and doc["product"] == "lineA" and "created" in doc
    assert set(doc["items"][0]) == {"image", "verdict", "defect_class", "record_id", "station", "model_version", "score",
                                    "reviewer", "reviewed_at", "comment"}
    assert read_feedback(path) == items

    good, defects = feedback_samples(path)
    assert [s.image for s in good] == images[:2] and all(s.label == 0 and s.defect_class == "good" and s.mask is None for s in good)
    assert [s.image for s in defects] == images[2:]
    assert [s.defect_class for s in defects] == ["scratch", DEFAULT_DEFECT_CLASS] and all(s.label == 1 for s in defects)
    prov = feedback_provenance(path)
    assert prov[0]["record_id"] == "r1" and prov[0]["manifest"] == str(path.resolve()) and prov[0]["reviewer"] == "ann"


def test_relative_paths(images: list[Path], tmp_path: Path) -> None:
    import shutil

    (tmp_path / "imgs").mkdir()
    shutil.copy(images[0], tmp_path / "imgs" / "a.png")
    path = write_feedback(tmp_path / "feedback.json", [FeedbackItem(image="imgs/a.png", verdict="false_alarm", reviewer="x")])
    assert read_feedback(path)[0].image == str((tmp_path / "imgs" / "a.png").resolve())
    assert feedback_samples(path)[0][0].image == (tmp_path / "imgs" / "a.png").resolve()


def test_bad_items_are_rejected_when_built() -> None:
    with pytest.raises(ValueError, match="verdict must be one of"):
        FeedbackItem(image="a.png", verdict="maybe", reviewer="x")
    with pytest.raises(ValueError, match="reviewer must be"):
        FeedbackItem(image="a.png", verdict="defect", reviewer="")
    with pytest.raises(ValueError, match="reviewed_at"):
        FeedbackItem(image="a.png", verdict="defect", reviewer="x", reviewed_at="yesterday")
    with pytest.raises(ValueError, match="false_alarm has no defect class"):
        FeedbackItem(image="a.png", verdict="false_alarm", defect_class="scratch", reviewer="x")


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_bad_files(images: list[Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_feedback(tmp_path / "nope.json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_feedback(_write(tmp_path / "a.json", "{oops"))
    with pytest.raises(DataError, match="not a Loupe feedback manifest"):
        read_feedback(_write(tmp_path / "b.json", {"format": "other", "items": []}))
    with pytest.raises(DataError, match="version 2 is not supported"):
        read_feedback(_write(tmp_path / "c.json", {"format": FEEDBACK_FORMAT, "version": 2, "items": []}))
    base = {"format": FEEDBACK_FORMAT, "version": 1, "product": None, "created": "2026-01-01T00:00:00+00:00"}
    bad = _write(tmp_path / "d.json", {**base, "items": [
        {"image": str(images[0]), "verdict": "nope", "reviewer": "x", "reviewed_at": "2026-01-01T00:00:00Z"},
        {"image": str(images[1]), "verdict": "defect", "reviewed_at": "2026-01-01T00:00:00Z"},
        {"image": str(images[1]), "verdict": "defect", "reviewer": "x", "reviewed_at": "2026-01-01T00:00:00Z", "extra": 1},
    ]})
    with pytest.raises(DataError, match=r"3 bad item\(s\)") as err:
        read_feedback(bad)
    msg = str(err.value)
    assert "item 1" in msg and "verdict" in msg and "missing keys ['reviewer']" in msg and "unknown keys ['extra']" in msg and str(bad) in msg


def test_missing_images_and_conflicts(images: list[Path], tmp_path: Path) -> None:
    path = write_feedback(tmp_path / "m.json", [FeedbackItem(image=str(tmp_path / "gone.png"), verdict="defect", reviewer="x")])
    with pytest.raises(DataError, match="missing image"):
        feedback_samples(path)
    path = write_feedback(tmp_path / "c.json", [FeedbackItem(image=str(images[0]), verdict="defect", reviewer="x"),
                                                FeedbackItem(image=str(images[0]), verdict="false_alarm", reviewer="y")])
    with pytest.raises(DataError, match="conflicting verdicts"):
        feedback_samples(path)
    path = write_feedback(tmp_path / "r.json", [FeedbackItem(image=str(images[0]), verdict="defect", reviewer="x")] * 2)
    with pytest.warns(UserWarning, match="repeated"):
        good, defects = feedback_samples(path)
    assert good == [] and len(defects) == 1


# ---------------------------------------------------------------------------- feedback in a training run's data


def test_combine_sources_with_feedback(tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    from pipeline.data import load_samples
    from pipeline.data.combine import combine_sources
    from pipeline.data.fingerprint import fingerprint

    extra = tmp_path / "extra"  # a plain folder of good images: training data only
    extra.mkdir()
    shutil.copy(sorted((tiny_data / "train" / "good").glob("*.png"))[0], extra / "x.png")
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    shutil.copy(sorted((tiny_data / "test" / "good").glob("*.png"))[0], reviewed / "fa.png")
    shutil.copy(sorted((tiny_data / "test" / "crack").glob("*.png"))[0], reviewed / "d.png")
    fb = write_feedback(tmp_path / "fb.json", [FeedbackItem(image="reviewed/fa.png", verdict="false_alarm", record_id="r1", reviewer="ann"),
                                               FeedbackItem(image="reviewed/d.png", verdict="defect", defect_class="crack", reviewer="bo")])
    combined = combine_sources([tiny_data, extra], tmp_path / "work", feedback=[fb])
    assert (combined.n_train, combined.n_test_good, combined.n_test_defect) == (24 + 1 + 1, 6, 12 + 1) and combined.labelled
    train = load_samples(combined.manifest, "train")
    test = load_samples(combined.manifest, "test")
    assert (reviewed / "fa.png").resolve() in {s.image for s in train}
    assert [s.defect_class for s in test if s.image == (reviewed / "d.png").resolve()] == ["crack"]
    assert fingerprint(train) == combined.train_fingerprint  # what pretrain_step/fit_step will compute
    prov = json.loads(combined.provenance.read_text())
    assert prov["feedback"][0]["record_id"] == "r1"
    rows = {r["image"]: r["from"] for r in prov["rows"]}
    assert rows[str((reviewed / "d.png").resolve())] == f"feedback:{fb.resolve()}" and rows[str(extra / "x.png")] == str(extra.resolve())
    # Deterministic: the same inputs give the same manifest file.
    assert combine_sources([tiny_data, extra], tmp_path / "work", feedback=[fb]).manifest == combined.manifest


def test_combine_sources_refuses_train_test_leak(tiny_data: Path, tmp_path: Path) -> None:
    from pipeline.data.combine import combine_sources

    leak = write_feedback(tmp_path / "fb.json", [FeedbackItem(image=str(sorted((tiny_data / "test" / "good").glob("*.png"))[0]),
                                                              verdict="false_alarm", reviewer="x")])
    with pytest.raises(DataError, match="both training and test data"):
        combine_sources([tiny_data], tmp_path / "work", feedback=[leak])
    with pytest.raises(DataError, match="does not exist"):
        combine_sources([tmp_path / "nope"], tmp_path / "work")


def test_feedback_product(tmp_path: Path) -> None:
    from pipeline.data.feedback import feedback_product

    assert feedback_product(write_feedback(tmp_path / "a.json", [], product="line-2")) == "line-2"
    assert feedback_product(write_feedback(tmp_path / "b.json", [])) is None
