"""The pipeline's steps on disk: pretrain -> fit -> evaluate, and the quality benchmark.

Each step reads and writes a run folder, so the CLI and the Prefect flows (which
pass paths, not tensors) are thin callers:

    RUN_DIR/config.yaml        resolved config of the run
    RUN_DIR/encoder.pt         pretrained encoder (state_dict + config)
    RUN_DIR/pretrain_state.pt  resumable training state
    RUN_DIR/pretrain.json      pretraining summary (data fingerprint, timings)
    RUN_DIR/inspector.pt       fitted scorer: encoder + memory bank + threshold
    RUN_DIR/fit.json           fit summary
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from models.encoder import Encoder, imagenet_lite0_weights, load_init_weights
from pipeline.atomic import atomic_open, write_json_atomic, write_text_atomic
from pipeline.config import LoupeConfig, config_from_dict, load_config, pretrain_image_size, pretraining_settings, save_config, to_dict
from pipeline.contrastive.pretrain import ENCODER_FILE, load_encoder, pretrain
from pipeline.data import DataError, Sample, check_readable, fingerprint, load_samples
from pipeline.data.tensors import load_images, load_masks
from pipeline.metrics import evaluate_predictions, heatmap_grid, plot_roc
from pipeline.scoring.fit import INSPECTOR_FILE, fit_inspector, load_inspector, save_inspector

CONFIG_FILE = "config.yaml"
# the quality figures every benchmark result carries (a subset of the evaluation report)
BENCH_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "per_class", "per_class_pixel", "false_alarm_rate", "recall_at_threshold")


def git_commit() -> str:
    """Short commit of the working tree Loupe runs from, "+dirty" when a tracked file outside benchmarks/results
    is modified; "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        # benchmark results are outputs: a run that appends to them leaves the code it measured clean
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """What a seeded CPU result depends on besides code and data: the same seed, config and thread count
    gave bit-identical encoders on one machine and a different one (MTD image AUROC 0.926 vs 0.936) on another CPU."""
    from pipeline.contrastive.pretrain import resolve_precision

    cpu, fields = platform.processor() or platform.machine(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "cpu family", "model") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
            if not line.strip() and fields:  # the first processor's block is enough
                break
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    # "AMD EPYC" names several generations: family and model tell them apart
    model = f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields and "model" in fields else None
    return {"cpu": cpu, "cpu_model": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": resolve_precision("auto", "cpu") == "bf16",  # what pretrain.precision "auto" runs here
            "platform": platform.platform()}


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state_dict tensors (names and bytes, in order): equal digests, bit-identical weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def read_samples(data: str | Path, split: str, skip_bad: bool, channels: int) -> tuple[list[Sample], str]:
    """Samples of `split` that decode (bad ones: one error, or skipped with a warning) and their fingerprint."""
    samples = check_readable(load_samples(data, split), skip_bad=skip_bad, channels=channels)
    return samples, fingerprint(samples)


def resolve_init_weights(cfg: LoupeConfig, override: str | Path | None) -> Path | None:
    """--init-weights wins over the config; "imagenet-lite0" names the optional package's file."""
    spec = override if override is not None else cfg.init_weights
    if spec is None or str(spec) in ("", "none"):
        return None
    return imagenet_lite0_weights() if str(spec) == "imagenet-lite0" else Path(spec)


def load_run_config(run_dir: str | Path) -> LoupeConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a Loupe run folder; create one with `loupe pretrain DATA --out {run_dir}`")
    return config_from_dict(yaml.safe_load(path.read_text()))


def initial_encoder(cfg: LoupeConfig) -> tuple[Encoder, Path | None]:
    """The run's starting encoder: seeded from-scratch initialisation, then the init weights if any -> (encoder, weights file)."""
    with torch.random.fork_rng(devices=[]):  # the initialisation belongs to the seeded run, whatever the global RNG holds
        torch.manual_seed(cfg.pretrain.seed)
        encoder = Encoder(cfg.encoder)
    init = resolve_init_weights(cfg, None)
    if init is not None:
        load_init_weights(encoder, init)
    return encoder, init


def pretrain_step(
    data: str | Path,
    run_dir: str | Path,
    config: str | Path | LoupeConfig = "default",
    *,
    epochs: int | None = None,
    init_weights: str | Path | None = None,
    resume: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Contrastive pretraining on the `train` images of `data`; writes RUN_DIR/encoder.pt."""
    run_dir = Path(run_dir)
    cfg = config if isinstance(config, LoupeConfig) else load_config(config)
    if epochs is not None:
        cfg.pretrain.epochs = epochs
    if init_weights is not None:
        cfg.init_weights = str(init_weights)
    cfg_path = run_dir / CONFIG_FILE
    if resume and cfg_path.is_file() and load_run_config(run_dir) != cfg:
        raise ValueError(f"{cfg_path} holds another config than this run; drop --resume or use a new --out folder")
    samples, fp = read_samples(data, "train", skip_bad, cfg.encoder.in_channels)
    save_config(cfg_path, cfg)  # only once the data is known good
    images = load_images(samples, pretrain_image_size(cfg), cfg.encoder.in_channels, progress=progress)
    encoder, init = initial_encoder(cfg)
    result = pretrain(images, encoder, cfg.pretrain, run_dir, resume=resume, device=device, progress=progress,
                      meta={"data_fingerprint": fp, "init_weights": str(init) if init else None}, on_epoch=on_epoch)
    summary = {
        "config": cfg.name, "method": cfg.pretrain.method, "epochs": cfg.pretrain.epochs, "n_images": len(samples),
        "data_fingerprint": fp, "init_weights": str(init) if init else None, "losses": result.losses,
        "seconds": result.seconds, "images_per_second": result.images_per_second, "precision": result.precision,
        "commit": git_commit(), "created": now(),
        # to tell a reproduced encoder from a merely similar one, and on what it was trained
        "encoder_digest": state_digest(encoder), "machine": machine_info(),
    }
    write_json_atomic(run_dir / "pretrain.json", summary)
    return summary


def fit_step(run_dir: str | Path, data: str | Path, *, skip_bad: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fit the scorer on the good `train` images of `data` with RUN_DIR's encoder; writes RUN_DIR/inspector.pt."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if not (run_dir / ENCODER_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / ENCODER_FILE} not found: run `loupe pretrain DATA --out {run_dir}` first")
    encoder, enc_meta = load_encoder(run_dir / ENCODER_FILE)
    samples, fp = read_samples(data, "train", skip_bad, cfg.encoder.in_channels)
    images = load_images(samples, cfg.scorer.image_size, cfg.encoder.in_channels, progress=progress)
    with torch.no_grad():
        res = fit_inspector(encoder, images, cfg.scorer, progress=progress)
    summary = {
        "config": cfg.name, "n_images": len(samples), "n_bank_images": res.n_bank_images, "n_holdout_images": res.n_holdout_images,
        "n_patches": res.n_patches, "bank_size": res.bank_size, "n_denoised": res.n_denoised, "n_unsupported": res.n_unsupported,
        # images the fit judged defective-looking and kept out of the bank (trim_fraction): worth a human look
        "n_trimmed": len(res.trimmed), "trimmed_images": [str(samples[i].image) for i in res.trimmed],
        "threshold_raw": res.threshold_raw,
        # how the threshold's good scores were made: images held out of the bank, or bank images scored leave-one-out
        "calibration": cfg.scorer.calibration,
        # held-out images whose scores were gross outliers (calibration_fence) and did not set the threshold: likely defective
        "n_calibration_outliers": len(res.calibration_outliers),
        "calibration_outliers": [str(samples[i].image) for i in res.calibration_outliers],
        # every held-out image and its raw score, highest first: which images set (or were kept from setting) the threshold
        "holdout_scores": [{"image": str(samples[i].image), "score": float(sc)}
                           for i, sc in sorted(zip(res.holdout, res.holdout_scores), key=lambda t: -t[1])],
        # false-alarm rate at the threshold on the held-out good images that calibrated it (no labels needed)
        "holdout_false_alarm_rate": float(np.mean(np.asarray(res.holdout_scores) >= res.threshold_raw)) if res.holdout_scores else None,
        "data_fingerprint": fp, "pretrain_fingerprint": enc_meta.get("data_fingerprint"),
        # the cross-fitted filters (trim_fraction, denoise_fraction) apart from feature extraction
        "feature_seconds": res.feature_seconds, "filter_seconds": res.filter_seconds, "coreset_seconds": res.coreset_seconds,
        "seconds": res.seconds,
        "commit": git_commit(), "created": now(),
    }
    save_inspector(res.inspector, run_dir / INSPECTOR_FILE, meta={k: summary[k] for k in ("config", "data_fingerprint", "threshold_raw", "bank_size", "commit", "created")})
    write_json_atomic(run_dir / "fit.json", summary)
    return summary


@torch.no_grad()
def score_samples(inspector: Any, samples: list[Sample], batch_size: int = 8, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the inspector's forward on samples -> (scores [N], maps [N, S, S], is_defect [N])."""
    size, channels = inspector.cfg.image_size, inspector.encoder.cfg.in_channels
    scores, maps, flags = [], [], []
    from tqdm import tqdm

    for i in tqdm(range(0, len(samples), batch_size), desc="evaluating", disable=not progress, leave=False):
        frames = load_images(samples[i : i + batch_size], size, channels).permute(0, 2, 3, 1).contiguous()  # [n, S, S, C]
        out = inspector(frames)
        scores.append(out.score.numpy()); maps.append(out.anomaly_map.numpy()); flags.append(out.is_defect.numpy())
    return np.concatenate(scores), np.concatenate(maps), np.concatenate(flags)


def test_samples(data: str | Path, skip_bad: bool, channels: int) -> tuple[list[Sample], np.ndarray, str]:
    """Labelled `test` samples of `data` (both classes required), their labels [N] and fingerprint."""
    samples, fp = read_samples(data, "test", skip_bad, channels)
    labels = np.array([s.label for s in samples])
    if labels.min() == labels.max():
        raise DataError(f"{data}: evaluation needs both good and defective test images; only label {labels[0]} found")
    return samples, labels, fp


def write_scores_csv(path: str | Path, samples: list[Sample], scores: np.ndarray, flags: np.ndarray) -> Path:
    """One row per image: image,label,score,is_defect (the format of `loupe evaluate --scores`)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "label", "score", "is_defect"])
    for s, sc, fl in zip(samples, scores, flags):
        w.writerow([str(s.image), s.label, f"{float(sc):.6g}", int(bool(fl))])
    return write_text_atomic(path, buf.getvalue())


def report_evaluation(
    samples: list[Sample],
    labels: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    flags: np.ndarray,
    out: str | Path,
    *,
    size: int,
    title: str,
    extra: dict[str, Any],
    scores_csv: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of scored test samples -> OUT json, OUT_roc.png, OUT_heatmaps.png (and the scores CSV).

    scores, flags: [N]; maps: [N, size, size] normalized (threshold 0.5). `extra` is merged into the JSON.
    """
    out = Path(out)
    masks = load_masks(samples, size)
    classes = [s.defect_class or ("good" if s.label == 0 else "defect") for s in samples]
    metrics = evaluate_predictions(labels, scores, classes, masks, maps, threshold=0.5)
    stem = out.with_suffix("")
    roc_png, grid_png = Path(f"{stem}_roc.png"), Path(f"{stem}_heatmaps.png")
    plot_roc(labels, scores, roc_png, classes=classes, title=title)
    pick = grid_items(labels, scores, classes)
    heatmap_grid([load_images([samples[i]], size, 1)[0, 0].numpy() for i in pick],
                 [maps[i] for i in pick], [masks[i] for i in pick], [float(scores[i]) for i in pick],
                 [int(labels[i]) for i in pick], grid_png, threshold=0.5, titles=[classes[i] for i in pick])
    metrics.update({"roc_png": str(roc_png), "heatmaps_png": str(grid_png), **extra, "commit": git_commit(), "created": now()})
    write_json_atomic(out, metrics)
    if scores_csv is not None:
        write_scores_csv(scores_csv, samples, scores, flags)
    return metrics


def evaluate_step(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    scores_csv: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the labelled `test` images of `data`; write metrics JSON, ROC and heatmap-grid PNGs next to it."""
    run_dir = Path(run_dir)
    if not (run_dir / INSPECTOR_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / INSPECTOR_FILE} not found: run `loupe fit {run_dir} DATA` first")
    inspector, meta = load_inspector(run_dir / INSPECTOR_FILE)
    samples, labels, fp = test_samples(data, skip_bad, inspector.encoder.cfg.in_channels)
    t0 = time.perf_counter()
    scores, maps, flags = score_samples(inspector, samples, progress=progress)
    seconds = time.perf_counter() - t0
    extra = {"threshold_raw": meta.get("threshold_raw"), "test_fingerprint": fp, "model_fingerprint": meta.get("data_fingerprint"),
             "eval_seconds": seconds, "images_per_second_eval": len(samples) / seconds}
    return report_evaluation(samples, labels, scores, maps, flags, out, size=inspector.cfg.image_size,
                             title=f"{meta.get('config', '')} on {Path(data).name}", extra=extra, scores_csv=scores_csv)


def grid_items(labels: np.ndarray, scores: np.ndarray, classes: list[str], per_class: int = 2, n_good: int = 4) -> list[int]:
    """Heatmap-grid picks: the top-scoring images of each defect class, then the highest-scoring good ones."""
    pick: list[int] = []
    for c in sorted(set(classes) - {"good"}):
        idx = [i for i in np.argsort(-scores) if classes[i] == c and labels[i] == 1]
        pick += idx[:per_class]
    pick += [i for i in np.argsort(-scores) if labels[i] == 0][:n_good]
    return pick[:16]


def reuse_pretraining(source: str | Path, run_dir: str | Path, cfg: LoupeConfig, data: str | Path) -> dict[str, Any]:
    """Copy SOURCE's encoder into RUN_DIR as the pretraining of `cfg` on `data` -> SOURCE's pretrain summary.

    Refused unless SOURCE was pretrained with the same init, encoder and pretrain settings on
    the same training images (fingerprint): only then is it the run `cfg` would train.
    """
    source, run_dir = Path(source), Path(run_dir)
    src_cfg = load_run_config(source)
    summary_path = source / "pretrain.json"
    if not (source / ENCODER_FILE).is_file() or not summary_path.is_file():
        raise FileNotFoundError(f"{source} has no finished pretraining ({ENCODER_FILE} and pretrain.json); run `loupe pretrain` into it first")
    mine, theirs = pretraining_settings(cfg), pretraining_settings(src_cfg)
    differ = [k for k in mine if mine[k] != theirs[k]]
    if differ:
        raise ValueError(f"{source} was pretrained with other {', '.join(differ)} settings than config {cfg.name!r}; "
                         "reuse only a pretraining of the same config")
    summary = json.loads(summary_path.read_text())
    fp = fingerprint(load_samples(data, "train"))  # the file list and bytes: no need to decode every image again
    if summary.get("data_fingerprint") != fp:
        raise ValueError(f"{source} was pretrained on other training images than {data} (fingerprint differs)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(run_dir / ENCODER_FILE) as f, (source / ENCODER_FILE).open("rb") as src:
        shutil.copyfileobj(src, f)
    save_config(run_dir / CONFIG_FILE, cfg)
    write_json_atomic(run_dir / "pretrain.json", {**summary, "reused_from": str(source)})
    return summary


def bench_quality(
    manifest: str | Path,
    out: str | Path,
    config: str | Path = "default",
    *,
    epochs: int | None = None,
    work_dir: str | Path | None = None,
    reuse_pretrain: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """pretrain -> fit -> evaluate from nothing with one config; one JSON of quality and cost.

    `reuse_pretrain`: a finished pretraining of the same encoder and pretrain settings on the same
    training data (seeded, so deterministic on CPU) stands in for the pretraining; its recorded
    cost is reported. For re-measuring scorer changes without 27 minutes of identical training.
    """
    out = Path(out)
    cfg = load_config(config)
    if epochs is not None:
        cfg.pretrain.epochs = epochs
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="loupe-bench-"))
    t0 = time.perf_counter()
    if reuse_pretrain is not None:
        pre = reuse_pretraining(reuse_pretrain, work, cfg, manifest)
    else:
        pre = pretrain_step(manifest, work, cfg, progress=progress)
    fit = fit_step(work, manifest, progress=progress)
    metrics = evaluate_step(work, manifest, work / "metrics.json", progress=progress)
    result = {
        **{k: metrics[k] for k in BENCH_KEYS},
        "pretrain_seconds": pre["seconds"], "fit_seconds": fit["seconds"], "images_per_second_pretrain": pre["images_per_second"],
        "coreset_seconds": fit["coreset_seconds"], "bank_size": fit["bank_size"], "n_patches": fit["n_patches"],
        "eval_seconds": metrics["eval_seconds"], "total_seconds": time.perf_counter() - t0,
        "config": to_dict(cfg), "config_name": cfg.name, "epochs": cfg.pretrain.epochs, "manifest": str(manifest),
        "data_fingerprint": pre["data_fingerprint"], "n_test": metrics["n_images"], "commit": git_commit(), "created": now(),
        "torch_threads": torch.get_num_threads(), "work_dir": str(work), "machine": machine_info(),
        "encoder_digest": pre.get("encoder_digest"), "pretrain_machine": pre.get("machine"),
        **({"pretrain_reused_from": str(reuse_pretrain), "pretrain_commit": pre.get("commit")} if reuse_pretrain is not None else {}),
    }
    write_json_atomic(out, result)
    return result
