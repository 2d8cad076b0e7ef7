"""Ablation on the Magnetic Tile Defects split: which part of the pretraining does the work.

    python benchmarks/ablation.py [--only NAME ...] [--epochs N] [--set KEY=VALUE ...]

Each row is a full pretrain -> fit -> evaluate from nothing (same scorer, same split).
Results accumulate in benchmarks/results/ablation.json (one entry per row name),
so rows can be run in separate sessions. `--epochs N` runs the rows at an equal, shorter
budget (entries named NAME@Nep) when the config's own length does not fit in a session.
`--set KEY=VALUE` (dotted config keys, values parsed as YAML, e.g. `pretrain.perturb.size=[0.06,0.4]`)
applies the same overrides on top of every row, for screening a pretraining change against its
baseline row; the entry is named NAME[KEY=VALUE,...] (then @Nep).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.config import load_config, parse_overrides, to_dict  # noqa: E402
from pipeline.steps import BENCH_KEYS, evaluate_step, fit_step, git_commit, pretrain_step  # noqa: E402

MTD = ROOT.parent / "shared/data/magnetic-tile-defects/split.json"
OUT = ROOT / "benchmarks/results/ablation.json"

# name -> (base config, overrides); epochs come from the base config unless overridden
ROWS: dict[str, tuple[str, dict]] = {
    "scratch/random-init": ("default", {"pretrain.epochs": 0}),
    "scratch/simclr": ("default", {"pretrain.method": "simclr", "pretrain.perturb": {"prob": 0.0}}),
    "scratch/moco": ("default", {"pretrain.method": "moco", "pretrain.perturb": {"prob": 0.0}}),
    "scratch/densecl": ("default", {"pretrain.method": "densecl", "pretrain.perturb": {"prob": 0.0}}),
    "scratch/densecl+hard-negatives": ("default", {"pretrain.method": "densecl"}),
    "scratch/default": ("default", {}),
    "imagenet/no-training": ("imagenet-lite0", {"pretrain.epochs": 0}),
    "imagenet/default": ("imagenet-lite0", {}),
    # the same fine-tuning budget (2 epochs, BatchNorm statistics frozen) with the other objectives
    "imagenet/simclr": ("imagenet-lite0", {"pretrain.method": "simclr"}),
    "imagenet/moco": ("imagenet-lite0", {"pretrain.method": "moco"}),
    "imagenet/spotdiff": ("imagenet-lite0", {"pretrain.method": "spotdiff", "pretrain.perturb": {"prob": 0.7}}),
    # mean-shifted contrast (Reiss and Hoshen), the paper's temperature
    "imagenet/msc": ("imagenet-lite0", {"pretrain.method": "msc", "pretrain.temperature": 0.25}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=MTD)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--epochs", type=int, default=None, help="pretraining epochs for every trained row (entries NAME@Nep)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs/ablation")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every row (repeatable; value parsed as YAML)")
    args = ap.parse_args()
    try:
        extra = parse_overrides(args.sets)
    except ValueError as exc:
        raise SystemExit(f"--set: {exc}") from None
    unknown = [n for n in args.only or [] if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {list(ROWS)}")
    for name in args.only or list(ROWS):  # --only runs in the order given
        base, overrides = ROWS[name]
        try:
            cfg = load_config(base, {**overrides, **extra})
        except ValueError as exc:  # unknown key or bad value: the loader's message names it
            raise SystemExit(f"row {name!r}: {exc}") from None
        if extra:
            name = f"{name}[{','.join(args.sets)}]"
        if args.epochs is not None and cfg.pretrain.epochs > 0 and args.epochs != cfg.pretrain.epochs:
            cfg.pretrain.epochs = args.epochs
            name = f"{name}@{args.epochs}ep"
        run = args.work / name.replace("/", "_")
        pre = pretrain_step(args.manifest, run, cfg, progress=False)
        fit = fit_step(run, args.manifest, progress=False)
        met = evaluate_step(run, args.manifest, run / "metrics.json", progress=False)
        results = json.loads(OUT.read_text()) if OUT.is_file() else {}  # rows another process finished meanwhile
        results[name] = {
            **{k: met[k] for k in BENCH_KEYS},
            "pretrain_seconds": pre["seconds"], "images_per_second_pretrain": pre["images_per_second"], "fit_seconds": fit["seconds"],
            "epochs": cfg.pretrain.epochs, "method": cfg.pretrain.method, "config": to_dict(cfg), "commit": git_commit(),
        }
        write_json_atomic(OUT, results)
        print(f"{name:>24}: image {met['image_auroc']:.3f} pixel {met['pixel_auroc']:.3f} aupro {met['aupro']:.3f} "
              f"pretrain {pre['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
