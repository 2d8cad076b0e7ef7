"""The `loupe` command line end to end: pretrain -> fit -> evaluate, bench quality, demo,
bad input (exit 2, no traceback), --resume. Small data and the smoke config throughout."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from flows import cli
from flows.cli import app

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "per_class", "false_alarm_rate", "recall_at_threshold")
BENCH_KEYS = METRIC_KEYS + ("pretrain_seconds", "fit_seconds", "images_per_second_pretrain", "config", "commit")
MT_DEFECTS = {"MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"}


def loupe(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: object) -> Result:
    result = loupe(*args)
    if result.exit_code != 0:
        tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and not isinstance(result.exception, SystemExit) else ""
        pytest.fail(f"loupe {' '.join(map(str, args))} -> exit {result.exit_code}\n{result.output}\n{tb}")
    return result


def bad_input(*args: object) -> Result:
    """A command that must fail cleanly: exit 2, one `Error: ...` on stderr, no traceback."""
    result = loupe(*args)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return result


def _load_state(run: Path) -> dict:
    import torch

    return torch.load(run / "pretrain_state.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A pretrained (smoke, 1 epoch) and fitted run folder; pretrain reads the manifest, fit the MVTec folder."""
    run = tmp_path_factory.mktemp("cli") / "run"
    ok("pretrain", tiny_data / "split.json", "--out", run, "--config", "smoke", "--epochs", 1, "--quiet")
    ok("fit", run, tiny_data, "--quiet")
    return run


# ----------------------------------------------------------------------------- happy paths


def test_pretrain_fit_evaluate(smoke_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    for name in ("config.yaml", "encoder.pt", "inspector.pt", "pretrain_state.pt", "pretrain.json", "fit.json"):
        assert (smoke_run / name).is_file(), name
    out, scores = tmp_path / "metrics.json", tmp_path / "scores.csv"
    result = ok("evaluate", smoke_run, tiny_data / "split.json", "--out", out, "--scores", scores, "--quiet")

    metrics = json.loads(out.read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
        if key != "per_class":
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert set(metrics["per_class"]) == {"scratch", "crack", "spot", "dent", "contamination", "missing_print"}
    assert all(0.0 <= v <= 1.0 for v in metrics["per_class"].values())

    with scores.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "label", "score", "is_defect"]
    assert len(rows) == 1 + 6 + 12
    assert {r[1] for r in rows[1:]} == {"0", "1"} and {r[3] for r in rows[1:]} <= {"0", "1"}
    assert all(math.isfinite(float(r[2])) for r in rows[1:])

    for png in (tmp_path / "metrics_roc.png", tmp_path / "metrics_heatmaps.png"):
        assert png.is_file() and cv2.imread(str(png)) is not None, png
        assert str(png) in result.stdout
    for text in ("image AUROC", "pixel AUROC", "AUPRO", "F1-max", "false-alarm rate", "recall", "missing_print", str(out)):
        assert text in result.stdout, text


def test_bench_quality(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = ok("bench", "quality", "--manifest", tiny_data / "split.json", "--out", out, "--config", "smoke",
                "--epochs", 1, "--work-dir", tmp_path / "work", "--quiet")
    bench = json.loads(out.read_text())
    missing = [k for k in BENCH_KEYS if k not in bench]
    assert not missing, missing
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "false_alarm_rate", "recall_at_threshold"):
        assert 0.0 <= bench[key] <= 1.0, (key, bench[key])
    assert bench["pretrain_seconds"] > 0 and bench["fit_seconds"] > 0 and bench["images_per_second_pretrain"] > 0
    assert bench["config"]["name"] == "smoke" and bench["config"]["pretrain"]["epochs"] == 1
    assert isinstance(bench["commit"], str) and bench["commit"]
    assert (tmp_path / "work" / "inspector.pt").is_file()
    assert "image AUROC" in result.stdout and str(out) in result.stdout

    # --reuse-pretrain: the same config's pretraining stands in -> the same figures, its cost reported
    again = tmp_path / "again.json"
    ok("bench", "quality", "--manifest", tiny_data / "split.json", "--out", again, "--config", "smoke",
       "--epochs", 1, "--reuse-pretrain", tmp_path / "work", "--work-dir", tmp_path / "work2", "--quiet")
    second = json.loads(again.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "pretrain_seconds"):
        assert second[key] == bench[key], key
    assert second["pretrain_reused_from"] == str(tmp_path / "work")
    # another pretraining length is another encoder: refused with a clear error
    refused = loupe("bench", "quality", "--manifest", tiny_data / "split.json", "--out", tmp_path / "x.json", "--config", "smoke",
                    "--epochs", 2, "--reuse-pretrain", tmp_path / "work", "--quiet")
    assert refused.exit_code == 2 and "other pretrain settings" in refused.output, refused.output


def test_demo_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's wiring on shrunken data (the real demo data is too big for the test budget)."""
    monkeypatch.setattr(cli, "DEMO_DATA", {**cli.DEMO_DATA, "n_train": 16, "n_test_good": 4, "n_test_defect": 6, "size": 64})
    out = tmp_path / "demo"
    result = ok("demo", "--out", out, "--config", "smoke", "--epochs", 0, "--quiet")
    for path in (out / "data/split.json", out / "data/strip.png", out / "run/inspector.pt", out / "metrics.json",
                 out / "metrics_roc.png", out / "metrics_heatmaps.png"):
        assert path.is_file(), path
    assert str(out / "metrics.json") in result.stdout and str(out / "data/strip.png") in result.stdout
    params = out / "data/params.json"
    before = params.stat().st_mtime_ns
    ok("demo", "--out", out, "--config", "smoke", "--epochs", 0, "--quiet")  # rerun: data reused
    assert params.stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- real data


def _mtd_manifest(mtd_root: Path, path: Path, n_train: int = 30, n_good: int = 6, per_defect: int = 2) -> Path:
    split = json.loads((mtd_root / "split.json").read_text())

    def row(image: str, mask: str | None, label: int) -> list:
        cls = image.split("/")[0] if label else "good"
        return [str(mtd_root / image), str(mtd_root / mask) if mask else None, label, cls]

    train = [row(*r) for r in split["train"][:n_train]]
    test = [row(*r) for r in split["test"] if r[2] == 0][:n_good]
    for cls in sorted(MT_DEFECTS):
        test += [row(*r) for r in split["test"] if r[2] == 1 and r[0].split("/")[0] == cls][:per_defect]
    path.write_text(json.dumps({"train": train, "test": test}, indent=1))
    return path


@pytest.mark.slow
def test_mtd_integration(mtd_root: Path, tmp_path: Path) -> None:
    manifest = _mtd_manifest(mtd_root, tmp_path / "mtd.json")
    assert len(json.loads(manifest.read_text())["test"]) == 16
    run, out = tmp_path / "run", tmp_path / "metrics.json"
    ok("pretrain", manifest, "--out", run, "--config", "smoke", "--epochs", 1, "--quiet")
    ok("fit", run, manifest, "--quiet")
    ok("evaluate", run, manifest, "--out", out, "--scores", tmp_path / "scores.csv", "--quiet")
    metrics = json.loads(out.read_text())
    assert set(metrics["per_class"]) == MT_DEFECTS
    for key in METRIC_KEYS:
        values = metrics[key].values() if key == "per_class" else [metrics[key]]
        assert all(v is not None and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (key, metrics[key])
    assert metrics["n_images"] == 16 and metrics["n_defect"] == 10


# ----------------------------------------------------------------------------- bad input


def test_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = bad_input("pretrain", empty, "--out", tmp_path / "run", "--config", "smoke", "--epochs", 0, "--quiet")
    assert str(empty) in result.stderr


def test_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = bad_input("pretrain", missing, "--out", tmp_path / "run", "--config", "smoke", "--quiet")
    assert str(missing) in result.stderr and "does not exist" in result.stderr


def test_corrupt_image_and_skip_bad(tiny_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted((tiny_data / "train/good").glob("*.png"))[:4]:
        shutil.copy(src, folder / src.name)
    corrupt = folder / "x.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())

    args = ("pretrain", folder, "--out", tmp_path / "run", "--config", "smoke", "--epochs", 0, "--quiet")
    result = bad_input(*args)
    assert str(corrupt) in result.stderr and "--skip-bad" in result.stderr

    result = ok(*args, "--skip-bad")
    assert "Warning" in result.stderr and str(corrupt) in result.stderr
    assert (tmp_path / "run/encoder.pt").is_file()
    assert json.loads((tmp_path / "run/pretrain.json").read_text())["n_images"] == 4


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_mask_size_mismatch(kind: str, smoke_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_mask.png"
    assert cv2.imwrite(str(wrong), np.full((32, 40), 255, np.uint8))
    rows = [(tiny_data / "train/good/000.png", None, 0, "train"), (tiny_data / "train/good/001.png", None, 0, "train"),
            (tiny_data / "test/good/000.png", None, 0, "test"), (tiny_data / "test/good/001.png", None, 0, "test"),
            (tiny_data / "test/scratch/000.png", tiny_data / "ground_truth/scratch/000_mask.png", 1, "test"),
            (tiny_data / "test/crack/000.png", wrong, 1, "test")]
    if kind == "csv":
        manifest = tmp_path / "m.csv"
        with manifest.open("w", newline="") as handle:
            w = csv.writer(handle)
            w.writerow(["image", "mask", "label", "split"])
            w.writerows([str(i), str(m) if m else "", lab, sp] for i, m, lab, sp in rows)
    else:
        manifest = tmp_path / "m.json"
        manifest.write_text(json.dumps({sp: [[str(i), str(m) if m else None, lab] for i, m, lab, s in rows if s == sp]
                                        for sp in ("train", "test")}))
    result = bad_input("evaluate", smoke_run, manifest, "--out", tmp_path / "metrics.json", "--quiet")
    assert str(wrong) in result.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_config_lists_shipped(tiny_data: Path, tmp_path: Path) -> None:
    result = bad_input("pretrain", tiny_data, "--out", tmp_path / "run", "--config", "nonexistent")
    for name in ("nonexistent", "default", "imagenet-lite0", "smoke"):
        assert name in result.stderr, name


def test_not_a_run(tiny_data: Path, tmp_path: Path) -> None:
    result = bad_input("fit", tmp_path, tiny_data, "--quiet")
    assert str(tmp_path) in result.stderr and "loupe pretrain" in result.stderr
    bad_input("evaluate", tmp_path, tiny_data, "--out", tmp_path / "m.json", "--quiet")


def test_console_script_help_and_clean_error(tmp_path: Path) -> None:
    """The installed `loupe` itself: fast help, and exit 2 with no traceback on bad input."""
    exe = shutil.which("loupe") or str(Path(sys.executable).parent / "loupe")
    if not os.path.exists(exe):
        pytest.skip("console script `loupe` not installed")
    for args in (["--help"], ["bench", "--help"]):
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr
    assert "quality" in proc.stdout
    proc = subprocess.run([exe, "fit", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- resume


def test_resume(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ("pretrain", tiny_data / "split.json", "--out", run, "--config", "smoke", "--epochs", 2, "--quiet")
    ok(*args)
    state = _load_state(run)
    assert state["epoch"] == 2 and len(state["losses"]) == 2
    encoder_mtime = (run / "encoder.pt").stat().st_mtime_ns

    ok(*args, "--resume")  # already complete: nothing more to train
    again = _load_state(run)
    assert again["epoch"] == 2 and again["losses"] == state["losses"]
    assert (run / "encoder.pt").stat().st_mtime_ns == encoder_mtime

    # Another epoch count is another config: --resume refuses instead of mixing schedules.
    result = bad_input("pretrain", tiny_data / "split.json", "--out", run, "--config", "smoke", "--epochs", 3, "--resume", "--quiet")
    assert "--resume" in result.stderr

    # A run interrupted after epoch 1 of 2 continues with epoch 2 only.
    from pipeline.checkpoint import save_atomic

    save_atomic({**state, "epoch": 1, "losses": state["losses"][:1]}, run / "pretrain_state.pt")
    ok(*args, "--resume")
    resumed = _load_state(run)
    assert resumed["epoch"] == 2 and len(resumed["losses"]) == 2
    assert resumed["losses"][0] == state["losses"][0]
    assert (run / "encoder.pt").stat().st_mtime_ns != encoder_mtime
