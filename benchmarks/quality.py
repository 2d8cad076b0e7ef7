"""Quality benchmark on the Magnetic Tile Defects split: `loupe bench quality` for each shipped config.

    python benchmarks/quality.py [--configs default imagenet-lite0 smoke] [--manifest PATH]

Writes benchmarks/results/mtd.json (default config) and mtd-<config>.json for the others,
plus extra runs given with --epochs (e.g. the untrained ImageNet scorer check:
`--configs imagenet-lite0 --epochs 0 --tag epochs0`). `--reuse-pretrain RUN` re-measures a scorer
change on an earlier run's encoder (same config and data only; seeded, so the same encoder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.steps import bench_quality  # noqa: E402

MTD = ROOT.parent / "shared/data/magnetic-tile-defects/split.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=MTD)
    ap.add_argument("--configs", nargs="+", default=["default", "imagenet-lite0", "smoke"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument("--reuse-pretrain", type=Path, default=None,
                    help="a finished pretraining of the config (e.g. an earlier run's work_dir): re-measure the scorer only")
    args = ap.parse_args()
    for name in args.configs:
        stem = "mtd" if name == "default" and not args.tag else f"mtd-{name}" + (f"-{args.tag}" if args.tag else "")
        out = ROOT / "benchmarks/results" / f"{stem}.json"
        r = bench_quality(args.manifest, out, name, epochs=args.epochs, reuse_pretrain=args.reuse_pretrain, progress=False)
        print(f"{name:>16}: image AUROC {r['image_auroc']:.3f}  pixel AUROC {r['pixel_auroc']:.3f}  AUPRO {r['aupro']:.3f}  "
              f"pretrain {r['pretrain_seconds']:.0f}s  fit {r['fit_seconds']:.0f}s -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
