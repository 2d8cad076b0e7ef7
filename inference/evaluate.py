"""`loupe evaluate BUNDLE_DIR DATA`: score the labelled test split through a bundle runtime.

The same outputs as `pipeline.steps.evaluate_step` (metrics JSON, ROC and heatmap-grid
PNGs next to it, optional CSV `image,label,score,is_defect`), so the AUROC and the
decisions of every runtime can be compared with one command each.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from inference.runtime import BundleInspector
from pipeline.atomic import write_json_atomic, write_text_atomic


def score_bundle(inspector: BundleInspector, samples: list[Any], batch_size: int = 16, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a bundle on samples -> (scores [N], maps [N, S, S], is_defect [N]); images decoded and resized as in training."""
    from tqdm import tqdm

    from pipeline.data.tensors import load_images

    spec = inspector.spec
    scores, maps, flags = [], [], []
    for i in tqdm(range(0, len(samples), batch_size), desc="evaluating", disable=not progress, leave=False):
        frames = load_images(samples[i : i + batch_size], spec.size, spec.channels).permute(0, 2, 3, 1).contiguous().numpy()
        r = inspector.run(frames)
        scores.append(r.score)
        maps.append(r.anomaly_map)
        flags.append(r.is_defect)
    return np.concatenate(scores), np.concatenate(maps), np.concatenate(flags)


def write_scores_csv(path: str | Path, samples: list[Any], scores: np.ndarray, flags: np.ndarray) -> Path:
    """One row per image: image,label,score,is_defect (the format of `loupe evaluate --scores`)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "label", "score", "is_defect"])
    for s, sc, fl in zip(samples, scores, flags):
        w.writerow([str(s.image), s.label, f"{float(sc):.6g}", int(bool(fl))])
    return write_text_atomic(path, buf.getvalue())


def evaluate_bundle(
    bundle_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    runtime: str | None = None,
    scores_csv: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    load: Callable[..., BundleInspector] = BundleInspector.load,
) -> dict[str, Any]:
    """Score the labelled `test` images of `data` with a bundle; metrics JSON (+ PNGs, CSV) like `evaluate_step`.

    runtime: torch, ort-cpu, ort-cuda, ort-trt or trt; None picks the best available.
    Extra keys over evaluate_step's: runtime, model_version, bundle.
    """
    from pipeline.data import DataError
    from pipeline.data.tensors import load_images, load_masks
    from pipeline.metrics import evaluate_predictions, heatmap_grid, plot_roc
    from pipeline.steps import _grid_items, _now, git_commit, read_samples

    bundle_dir, out = Path(bundle_dir), Path(out)
    inspector = load(bundle_dir, runtime=runtime)
    spec, manifest = inspector.spec, inspector.bundle.manifest
    samples, fp = read_samples(data, "test", skip_bad, spec.channels)
    labels = np.array([s.label for s in samples])
    if labels.min() == labels.max():
        raise DataError(f"{data}: evaluation needs both good and defective test images; only label {labels[0]} found")
    t0 = time.perf_counter()
    scores, maps, flags = score_bundle(inspector, samples, progress=progress)
    seconds = time.perf_counter() - t0
    masks = load_masks(samples, spec.size)
    classes = [s.defect_class or ("good" if s.label == 0 else "defect") for s in samples]
    metrics = evaluate_predictions(labels, scores, classes, masks, maps, threshold=0.5)
    stem = out.with_suffix("")
    roc_png, grid_png = Path(f"{stem}_roc.png"), Path(f"{stem}_heatmaps.png")
    plot_roc(labels, scores, roc_png, classes=classes, title=f"bundle {inspector.model_version} ({inspector.runtime}) on {Path(data).name}")
    pick = _grid_items(labels, scores, classes)
    heatmap_grid([load_images([samples[i]], spec.size, 1)[0, 0].numpy() for i in pick],
                 [maps[i] for i in pick], [masks[i] for i in pick], [float(scores[i]) for i in pick],
                 [int(labels[i]) for i in pick], grid_png, threshold=0.5, titles=[classes[i] for i in pick])
    metrics.update({
        "threshold_raw": manifest["threshold"]["raw"], "test_fingerprint": fp, "model_fingerprint": manifest.get("data_fingerprint"),
        "eval_seconds": seconds, "images_per_second_eval": len(samples) / seconds, "roc_png": str(roc_png),
        "heatmaps_png": str(grid_png), "runtime": inspector.runtime, "model_version": inspector.model_version,
        "bundle": str(bundle_dir), "commit": git_commit(), "created": _now(),
    })
    write_json_atomic(out, metrics)
    if scores_csv is not None:
        write_scores_csv(scores_csv, samples, scores, flags)
    return metrics
