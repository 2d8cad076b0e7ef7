"""Robustness of the quality benchmark: contaminated and small unlabeled training sets.

    python benchmarks/robustness.py [--config default] [--clean-run RUN_DIR] [--fraction 0.05] [--few 50]
                                    [--set scorer.KEY=VALUE ...] [--work DIR] [--contamination-only]

Two questions a quality engineer asks before trusting "train on good parts only":

- contamination: the unlabeled training images are never checked by a person, so some are
  defective. `ceil(f * n / (1 - f))` defective test images (stratified over the defect classes,
  seeded) join the training list, unlabeled, so that a fraction f of it is defective; they leave
  the test list. The clean model (trained on the benchmark split, `--clean-run` reuses one, e.g.
  the `work_dir` of benchmarks/results/mtd.json) and the contaminated one are scored on the same
  reduced test list; the cost is the difference in points.
- few images: a seeded subset of `--few` good training images, scored on the full test list.

Each run is the benchmark's pretrain -> fit -> evaluate with the same config; pretrainings can
run ahead (`--manifests-only`, then `loupe pretrain WORK/contaminated.json --out WORK/contaminated`,
likewise WORK/few50) and are reused when found in --work. `--set` overrides config keys
(dotted, values parsed as YAML), e.g. `--set scorer.min_support=2`: with the same --work the
pretrainings are reused and only the fits differ (fitted into RUN_DIR-fit-TAG). Writes
benchmarks/results/robustness.json (one entry per config, `CONFIG/key=value,...` with --set, or `--entry NAME`).
"""
from __future__ import annotations

import argparse
from collections import Counter
import json
import math
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.config import load_config, parse_overrides  # noqa: E402
from pipeline.steps import BENCH_KEYS, evaluate_step, fit_step, git_commit, now, pretrain_step, reuse_pretraining  # noqa: E402

MTD = ROOT.parent / "shared/data/magnetic-tile-defects/split.json"
OUT = ROOT / "benchmarks/results/robustness.json"


def _absolute(manifest: Path, rows: list[list[Any]]) -> list[list[Any]]:
    """Rows with absolute image/mask paths, so the derived manifest can live anywhere; defect rows
    name their class (the loader would otherwise read it from the first folder of the written path)."""
    base = manifest.parent
    out = []
    for r in rows:
        cls = r[3] if len(r) > 3 else (Path(r[0]).parts[0] if int(r[2]) == 1 else None)
        out.append([str(base / r[0]), str(base / r[1]) if r[1] else None, int(r[2])] + ([cls] if cls else []))
    return out


def _class_of(row: list[Any]) -> str:
    return row[3]


def contaminate(split: dict[str, list], fraction: float, seed: int) -> tuple[dict[str, list], list[list[Any]]]:
    """Move defective test rows into train (relabelled good, mask dropped) -> (new split, moved rows).

    The count is the smallest that makes `fraction` of the new train list defective; it is
    spread over the defect classes by largest remainder of their share, then drawn seeded.
    """
    train, test = split["train"], split["test"]
    k = math.ceil(fraction * len(train) / (1.0 - fraction))
    by_class: dict[str, list[list[Any]]] = {}
    for row in test:
        if int(row[2]) == 1:
            by_class.setdefault(_class_of(row), []).append(row)
    n_def = sum(len(v) for v in by_class.values())
    shares = {c: k * len(v) / n_def for c, v in sorted(by_class.items())}
    counts = {c: int(s) for c, s in shares.items()}
    for c in sorted(shares, key=lambda c: counts[c] - shares[c])[: k - sum(counts.values())]:
        counts[c] += 1
    rng = random.Random(seed)
    moved = [row for c in sorted(counts) for row in rng.sample(by_class[c], counts[c])]
    moved_images = {row[0] for row in moved}
    new_train = train + [[row[0], None, 0] for row in moved]  # unlabeled, as on the line: Loupe is told they are good
    new_test = [row for row in test if row[0] not in moved_images]
    return {"train": new_train, "test": new_test}, moved


def few(split: dict[str, list], n: int, seed: int) -> dict[str, list]:
    """A seeded subset of n training rows; the test list unchanged."""
    return {"train": random.Random(seed).sample(split["train"], n), "test": split["test"]}


def _tag(overrides: dict[str, Any]) -> str:
    """{'scorer.min_support': 2} -> 'scorer.min_support=2': names a --set run's entry, fit folders and outputs."""
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))


def run(manifest: Path, run_dir: Path, config: str, overrides: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Pretrain and fit `config` on `manifest` -> (fitted run folder, cost).

    A finished pretraining already in `run_dir` (same config and training images, e.g. from
    `loupe pretrain MANIFEST --out RUN_DIR` started earlier) is reused: fitted in RUN_DIR-fit.
    """
    cfg = load_config(config, overrides)
    if (run_dir / "pretrain.json").is_file():
        tag = _tag(overrides or {})
        fitted = run_dir.with_name(run_dir.name + "-fit" + (f"-{tag}" if tag else ""))
        pre = reuse_pretraining(run_dir, fitted, cfg, manifest)
    else:
        fitted = run_dir
        pre = pretrain_step(manifest, run_dir, cfg, progress=False)
    fit = fit_step(fitted, manifest, progress=False)
    return fitted, {"pretrain_seconds": pre["seconds"], "fit_seconds": fit["seconds"], "bank_size": fit["bank_size"],
                    "n_train": pre["n_images"]}


def write_manifests(manifest: Path, work: Path, fraction: float, n_few: int, seed: int) -> tuple[Path, Path, list[list[Any]]]:
    """The contaminated and few-image manifests in `work` (deterministic) -> (contaminated, few, moved rows)."""
    split = json.loads(manifest.read_text())
    split = {name: _absolute(manifest, split[name]) for name in ("train", "test")}
    dirty_split, moved = contaminate(split, fraction, seed)
    dirty = work / "contaminated.json"
    write_json_atomic(dirty, dirty_split)
    small = work / f"few{n_few}.json"
    write_json_atomic(small, few(split, n_few, seed))
    return dirty, small, moved


def metrics(run_dir: Path, manifest: Path, out: Path) -> dict[str, Any]:
    met = evaluate_step(run_dir, manifest, out, progress=False)
    return {**{k: met[k] for k in BENCH_KEYS}, "n_test": met["n_images"]}


def _line(name: str, m: dict[str, Any]) -> str:
    return f"{name:>28}: image {m['image_auroc']:.4f} pixel {m['pixel_auroc']:.4f} aupro {m['aupro']:.4f} (n_test {m['n_test']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=MTD)
    ap.add_argument("--config", default="default")
    ap.add_argument("--clean-run", type=Path, default=None, help="a finished run of --config on --manifest (pretrained and fitted)")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--few", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="working folder; pretrainings already finished there are reused")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (dotted key, YAML value), e.g. scorer.min_support=2; repeatable")
    ap.add_argument("--contamination-only", action="store_true",
                    help="only the contamination comparison (skips the full-test clean score and the few-image run)")
    ap.add_argument("--manifests-only", action="store_true", help="write the two derived manifests into --work and stop")
    ap.add_argument("--entry", default=None,
                    help="name of the robustness.json entry (default: CONFIG, or CONFIG/key=value,... with --set); "
                         "e.g. a second machine's run of a config, beside the first")
    args = ap.parse_args()
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from None
    tag = _tag(overrides)
    entry = args.entry or args.config + (f"/{tag}" if tag else "")
    sfx = f"-{tag}" if tag else ""  # evaluation outputs of a --set run next to, not over, the plain run's
    work = args.work or Path(tempfile.mkdtemp(prefix="loupe-robust-"))
    work.mkdir(parents=True, exist_ok=True)
    dirty_manifest, few_manifest, moved = write_manifests(args.manifest, work, args.fraction, args.few, args.seed)
    if args.manifests_only:
        print(f"{dirty_manifest}\n{few_manifest}")
        return

    clean_run = args.clean_run
    clean_cost: dict[str, Any] = {}
    if clean_run is None:
        clean_run, clean_cost = run(args.manifest, work / "clean", args.config, overrides)
    clean_full = None
    if not args.contamination_only:
        clean_full = metrics(clean_run, args.manifest, work / f"clean-full{sfx}.json")
        print(_line("clean, full test", clean_full), flush=True)
    clean_reduced = metrics(clean_run, dirty_manifest, work / f"clean-reduced{sfx}.json")
    print(_line("clean, reduced test", clean_reduced), flush=True)
    dirty_run, dirty_cost = run(dirty_manifest, work / "contaminated", args.config, overrides)
    dirty = metrics(dirty_run, dirty_manifest, work / f"contaminated-metrics{sfx}.json")
    print(_line(f"{args.fraction:.0%} contaminated", dirty), flush=True)
    few_entry = None
    if clean_full is not None:
        few_run, few_cost = run(few_manifest, work / f"few{args.few}", args.config, overrides)
        few_met = metrics(few_run, few_manifest, work / f"few{args.few}-metrics{sfx}.json")
        print(_line(f"{args.few} training images", few_met), flush=True)
        few_entry = {
            "n_train": args.few, "metrics": few_met, "cost": few_cost,
            "image_auroc_cost_points": 100 * (clean_full["image_auroc"] - few_met["image_auroc"]),
            "pixel_auroc_cost_points": 100 * (clean_full["pixel_auroc"] - few_met["pixel_auroc"]),
        }

    classes = dict(Counter(_class_of(row) for row in moved))
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[entry] = {
        "config": args.config, "overrides": overrides, "manifest": str(args.manifest), "seed": args.seed, "clean_run": str(clean_run), "clean_cost": clean_cost,
        "clean": clean_full,
        "contamination": {
            "fraction": len(moved) / dirty_cost["n_train"], "n_defective_in_train": len(moved), "n_train": dirty_cost["n_train"],
            "moved_per_class": classes, "clean": clean_reduced, "contaminated": dirty, "cost": dirty_cost,
            "image_auroc_cost_points": 100 * (clean_reduced["image_auroc"] - dirty["image_auroc"]),
            "pixel_auroc_cost_points": 100 * (clean_reduced["pixel_auroc"] - dirty["pixel_auroc"]),
        },
        "few_images": few_entry,
        "commit": git_commit(), "created": now(), "work_dir": str(work),
    }
    write_json_atomic(OUT, results)
    print(f"-> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
