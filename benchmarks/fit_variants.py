"""Scorer variants on one pretrained encoder: fit and evaluate the same RUN_DIR's encoder with config overrides.

    python benchmarks/fit_variants.py RUN_DIR DATA NAME:key=value,key=value [NAME:...] [--tag TAG]

RUN_DIR is a `loupe pretrain` folder (config.yaml + encoder.pt); each variant copies them to
RUN_DIR-NAME, overrides `scorer.<key>` (values parsed as YAML; an empty list keeps the
config), then runs `loupe fit` and `loupe evaluate` on DATA. Results accumulate in
benchmarks/results/fit-variants.json under "TAG/NAME" (TAG defaults to RUN_DIR's name), with
the encoder's pretraining epochs, so pretraining length and scorer choices can be compared
without re-pretraining. `--latency` also exports each variant (fp32) and times it in ONNX Runtime on
the CPU: batch-1 p50 and the encoder / search split (run it on a quiet machine), which makes a
list of variants a sweep of bank size and dims against latency and AUROC. Example (the 150-epoch MTD comparison in the README):

    loupe pretrain ../shared/data/magnetic-tile-defects/split.json --out runs/mtd150 --epochs 150
    python benchmarks/fit_variants.py runs/mtd150 ../shared/data/magnetic-tile-defects/split.json shipped:
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.config import load_config, parse_overrides, save_config, to_dict  # noqa: E402
from pipeline.steps import evaluate_step, fit_step, git_commit, now  # noqa: E402

OUT = ROOT / "benchmarks/results/fit-variants.json"


def parse_variant(spec: str) -> tuple[str, dict]:
    """'name:key=val,key=val' -> (name, {key: yaml value})."""
    name, sep, body = spec.partition(":")
    if not name or not sep:
        raise SystemExit(f"variant {spec!r}: expected NAME:key=value,... (or NAME: for the config as it is)")
    try:
        return name, parse_overrides(filter(None, re.split(r",(?![^\[]*\])", body)))  # commas inside [...] belong to a list
    except ValueError as err:
        # keys here are scorer keys without the `scorer.` prefix, whatever the shared message's example says
        raise SystemExit(f"variant {spec!r}: {err} (here: a scorer key, e.g. calibration=leave_one_out)") from None


def ort_latency(run: Path) -> dict[str, float]:
    """Export the fitted variant (fp32) and time it in ONNX Runtime CPU: batch-1 p50 and the encoder / search split."""
    from inference.export import export_bundle
    from inference.latency import measure_latency

    bundle = run / "bundle"
    export_bundle(run, bundle)
    lat = measure_latency(bundle, runtimes=["ort_cpu"], batch=8)
    split = lat["split"]["ort_cpu"]
    return {"ort_cpu_p50_ms": lat["runtimes"]["ort_cpu"]["p50_ms"], "ort_encoder_ms": split["encoder_ms"],
            "ort_search_ms": split["search_ms"], "flops_search_and_post": lat["flops_search_and_post"],
            "flops_encoder": lat["flops_encoder"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--latency", action="store_true", help="export each variant and time it in ONNX Runtime CPU")
    args = ap.parse_args()
    tag = args.tag or args.run.name
    epochs = json.loads((args.run / "pretrain.json").read_text())["epochs"] if (args.run / "pretrain.json").is_file() else None
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for name, overrides in map(parse_variant, args.variants):
        # the run's own config with scorer.<key> overrides (unknown keys are refused, as for any config)
        try:
            cfg = load_config(args.run / "config.yaml", {f"scorer.{k}": v for k, v in overrides.items()})
        except ValueError as exc:  # unknown key or bad value: the loader's message names it
            raise SystemExit(f"variant {name!r}: {exc}") from None
        run = args.run.parent / f"{args.run.name}-{name}"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        shutil.copy(args.run / "encoder.pt", run / "encoder.pt")
        save_config(run / "config.yaml", cfg)
        fit = fit_step(run, args.data, progress=False)
        m = evaluate_step(run, args.data, run / "metrics.json", progress=False)
        results[f"{tag}/{name}"] = {
            **{k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "false_alarm_rate", "recall_at_threshold",
                                 "per_class", "per_class_pixel")},
            "overrides": overrides, "scorer": to_dict(cfg.scorer), "pretrain_epochs": epochs, "bank_size": fit["bank_size"],
            "fit_seconds": fit["seconds"], "data": str(args.data), "commit": git_commit(), "created": now(),
            # which training images trim_fraction judged defective-looking (the robustness lists plant known ones)
            "n_trimmed": fit["n_trimmed"], "trimmed_images": fit["trimmed_images"],
            "n_calibration_outliers": fit["n_calibration_outliers"],
            **(ort_latency(run) if args.latency else {}),
        }
        write_json_atomic(OUT, results)
        row = results[f"{tag}/{name}"]
        timing = f" ort p50 {row['ort_cpu_p50_ms']:.1f} ms (encoder {row['ort_encoder_ms']:.1f}, search {row['ort_search_ms']:.1f})" if args.latency else ""
        print(f"{tag}/{name}: image {m['image_auroc']:.3f} pixel {m['pixel_auroc']:.3f} AUPRO {m['aupro']:.3f} "
              f"FAR {m['false_alarm_rate']:.1%} recall {m['recall_at_threshold']:.1%} bank {fit['bank_size']} trimmed {row['n_trimmed']} "
              f"fit {fit['seconds']:.0f}s{timing}", flush=True)


if __name__ == "__main__":
    main()
