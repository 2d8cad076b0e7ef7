"""Evaluation over large image sets in shards: each shard scored independently (e.g. on a Dask worker), one report.

    score_test_shard(run_dir, data, start, stop, out_npz)   -> scores, maps, flags of test rows [start, stop)
    report_from_shards(run_dir, data, shard_files, out)    -> the same metrics JSON, ROC and heatmap PNGs as
                                                              `pipeline.steps.evaluate_step`

Shards pass through files (paths in, paths out), so the scoring can run in other processes
or on other machines that see the same file system.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_open


def shard_ranges(n: int, n_shards: int) -> list[tuple[int, int]]:
    """Split range(n) into at most n_shards contiguous, non-empty [start, stop) ranges of near-equal size."""
    n_shards = max(1, min(int(n_shards), n))
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def score_test_shard(run_dir: str | Path, data: str | Path, start: int, stop: int, out_npz: str | Path, *,
                     skip_bad: bool = False, batch_size: int = 8) -> Path:
    """Score the labelled test rows [start, stop) of `data` with RUN_DIR's inspector; write scores/maps/flags to out_npz."""
    from pipeline.scoring.fit import INSPECTOR_FILE, load_inspector
    from pipeline.steps import score_samples, test_samples

    run_dir = Path(run_dir)
    inspector, _ = load_inspector(run_dir / INSPECTOR_FILE)
    samples, _, _ = test_samples(data, skip_bad, inspector.encoder.cfg.in_channels)
    if not 0 <= start < stop <= len(samples):
        raise ValueError(f"shard [{start}, {stop}) is outside the {len(samples)} test rows of {data}")
    t0 = time.perf_counter()
    scores, maps, flags = score_samples(inspector, samples[start:stop], batch_size=batch_size, progress=False)
    buf = io.BytesIO()
    np.savez(buf, scores=scores, maps=maps, flags=flags, start=start, stop=stop, seconds=time.perf_counter() - t0)
    with atomic_open(out_npz) as f:
        f.write(buf.getvalue())
    return Path(out_npz)


def report_from_shards(run_dir: str | Path, data: str | Path, shard_files: list[str | Path], out: str | Path, *,
                       scores_csv: str | Path | None = None, skip_bad: bool = False) -> dict[str, Any]:
    """Join shard files (covering every test row exactly once) into evaluate_step's report."""
    from pipeline.scoring.fit import INSPECTOR_FILE
    from pipeline.checkpoint import load_checkpoint
    from pipeline.steps import load_run_config, report_evaluation, test_samples

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    meta = load_checkpoint(run_dir / INSPECTOR_FILE)["meta"]
    samples, labels, fp = test_samples(data, skip_bad, cfg.encoder.in_channels)
    parts = sorted((dict(np.load(p)) for p in shard_files), key=lambda d: int(d["start"]))
    covered = [(int(d["start"]), int(d["stop"])) for d in parts]
    if [a for a, _ in covered] != [0] + [b for _, b in covered[:-1]] or not covered or covered[-1][1] != len(samples):
        raise ValueError(f"shards {covered} do not cover the {len(samples)} test rows of {data} exactly once")
    scores = np.concatenate([d["scores"] for d in parts])
    maps = np.concatenate([d["maps"] for d in parts])
    flags = np.concatenate([d["flags"] for d in parts])
    seconds = float(sum(float(d["seconds"]) for d in parts))
    extra = {"threshold_raw": meta.get("threshold_raw"), "test_fingerprint": fp, "model_fingerprint": meta.get("data_fingerprint"),
             "eval_seconds": seconds, "images_per_second_eval": len(samples) / seconds if seconds else None, "eval_shards": len(parts)}
    return report_evaluation(samples, labels, scores, maps, flags, out, size=cfg.scorer.image_size,
                             title=f"{meta.get('config', '')} on {Path(data).name}", extra=extra, scores_csv=scores_csv)
