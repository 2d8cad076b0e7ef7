"""`loupe evaluate BUNDLE_DIR DATA`: score the labelled test split through a bundle runtime.

The same outputs as `pipeline.steps.evaluate_step` (metrics JSON, ROC and heatmap-grid
PNGs next to it, optional CSV `image,label,score,is_defect`), so the AUROC and the
decisions of every runtime can be compared with one command each.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from inference.runtime import BundleInspector


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
    from pipeline.steps import report_evaluation, test_samples

    bundle_dir = Path(bundle_dir)
    inspector = load(bundle_dir, runtime=runtime)
    spec, manifest = inspector.spec, inspector.bundle.manifest
    samples, labels, fp = test_samples(data, skip_bad, spec.channels)
    t0 = time.perf_counter()
    scores, maps, flags = score_bundle(inspector, samples, progress=progress)
    seconds = time.perf_counter() - t0
    extra = {"threshold_raw": manifest["threshold"]["raw"], "test_fingerprint": fp, "model_fingerprint": manifest.get("data_fingerprint"),
             "eval_seconds": seconds, "images_per_second_eval": len(samples) / seconds, "runtime": inspector.runtime,
             "model_version": inspector.model_version, "bundle": str(bundle_dir)}
    return report_evaluation(samples, labels, scores, maps, flags, out, size=spec.size, extra=extra, scores_csv=scores_csv,
                             title=f"bundle {inspector.model_version} ({inspector.runtime}) on {Path(data).name}")
