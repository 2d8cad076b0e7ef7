"""The synthetic demo as a benchmark: `loupe demo` end to end from nothing, its quality and wall time.

    python benchmarks/demo.py [--epochs N] [--out benchmarks/results/demo.json]

Runs `loupe demo --no-serve --quiet` in a fresh temporary folder (data generation,
training flow with pretraining of the `default` config, fit, evaluation, export, registry,
batch and live inspection, review queue) and writes the demo's metrics (image and pixel
AUROC, AUPRO, per-class image AUROC, ...), its pretraining time and the end-to-end wall
time to one JSON. Run it on a quiet machine: the times are wall-clock.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.steps import BENCH_KEYS, git_commit, now  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="Pretraining epochs (default: the demo's own).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/demo.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loupe-demo-bench-"))
    cmd = [str(Path(sys.executable).parent / "loupe"), "demo", "--out", str(work / "demo"), "--no-serve", "--quiet"]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"loupe demo failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((work / "demo" / "metrics.json").read_text())
    pretrain = next(json.loads(p.read_text()) for p in (work / "demo").rglob("pretrain.json"))
    from flows.cli import DEMO_DATA

    result = {
        **{k: metrics[k] for k in BENCH_KEYS},
        "epochs": pretrain["epochs"], "pretrain_seconds": pretrain["seconds"],
        "images_per_second_pretrain": pretrain["images_per_second"], "wall_seconds": wall, "data": DEMO_DATA,
        "command": " ".join(["loupe"] + cmd[1:]), "commit": git_commit(), "created": now(),
        "stdout_tail": proc.stdout[-2000:],
    }
    write_json_atomic(args.out, result)
    shutil.rmtree(work, ignore_errors=True)
    print(f"demo: image AUROC {result['image_auroc']:.3f}  pixel AUROC {result['pixel_auroc']:.3f}  AUPRO {result['aupro']:.3f}  "
          f"pretrain {result['pretrain_seconds']:.0f}s  wall {wall:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
