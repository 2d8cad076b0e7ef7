"""Latency benchmark: batch-1 p50/p99 and batch-32 throughput of a bundle on every runtime
available on this machine (torch_cpu, ort_cpu, ort_cpu_int8; with CUDA also torch_cuda,
ort_cuda, ort_trt, trt), the encoder / search / post-processing time split, FLOPs per image.

    python benchmarks/latency.py BUNDLE_DIR                     # an exported bundle
    python benchmarks/latency.py --run RUN_DIR [--data DATA]    # export a fitted run first (int8 too with --data)
    python benchmarks/latency.py --synthetic default            # a config's model at its default size: random
                                                                # weights and a random bank of --bank-size rows
                                                                # (latency does not depend on the values)

Writes benchmarks/results/latency.json (--out to change). Run it on a quiet machine:
the numbers are wall-clock times. See inference/latency.py for the JSON shape.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.atomic import write_json_atomic  # noqa: E402


def synthetic_run(config: str, work: Path, bank_size: int | None, seed: int = 0) -> tuple[Path, Path]:
    """A run folder with an untrained inspector of `config` (random bank) and small synthetic data for INT8 calibration."""
    import torch

    from models.encoder import Encoder
    from pipeline.config import load_config
    from pipeline.data.synthetic import write_dataset
    from pipeline.scoring.fit import save_inspector
    from pipeline.scoring.inspector import Inspector

    cfg = load_config(config)
    torch.manual_seed(seed)
    encoder = Encoder(cfg.encoder).eval()
    rows = bank_size or cfg.scorer.max_bank
    inspector = Inspector(encoder, cfg.scorer, bank_size=rows).eval()
    inspector.set_bank(torch.randn(rows, inspector.patches.dim))
    inspector.set_threshold(1.0, 0.0)
    run = work / "run"
    save_inspector(inspector, run / "inspector.pt", meta={"config": cfg.name, "data_fingerprint": None, "synthetic": True})
    data = write_dataset(work / "data", n_train=16, n_test_good=6, n_test_defect=6, size=cfg.scorer.image_size, seed=seed)
    return run, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?", help="Bundle folder to measure.")
    ap.add_argument("--run", type=Path, help="Fitted run folder to export and measure instead.")
    ap.add_argument("--data", type=Path, help="With --run: the run's data (INT8 calibration).")
    ap.add_argument("--synthetic", metavar="CONFIG", help="Measure an untrained model of this config (e.g. default).")
    ap.add_argument("--bank-size", type=int, help="With --synthetic: memory-bank rows (default: the config's max_bank).")
    ap.add_argument("--runtimes", nargs="+", help="Only these runtimes.")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0, help="Time budget per measurement.")
    ap.add_argument("--min-iters", type=int, default=50)
    ap.add_argument("--max-batch", type=int, default=32, help="Export: largest batch (TensorRT profile).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latency.json")
    args = ap.parse_args()
    if sum(x is not None for x in (args.bundle, args.run, args.synthetic)) != 1:
        ap.error("give exactly one of BUNDLE_DIR, --run RUN_DIR, --synthetic CONFIG")

    from inference.export import export_bundle
    from inference.latency import measure_latency
    from inference.runtime import tensorrt_available

    def say(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="loupe-latency-") as tmp:
        bundle, source = args.bundle, str(args.bundle)
        if bundle is None:
            work = Path(tmp)
            if args.synthetic:
                run, data = synthetic_run(args.synthetic, work, args.bank_size)
                source = f"synthetic:{args.synthetic}"
            else:
                run, data = args.run, args.data
                source = str(args.run)
            fmt = "all" if tensorrt_available()[0] else "onnx"
            precisions = ("fp16", "int8") if data is not None else ("fp16",)
            say(f"exporting {source} ({fmt}, {', '.join(precisions)})")
            bundle = work / "bundle"
            export_bundle(run, bundle, formats=fmt, precisions=precisions, max_batch=max(args.max_batch, args.batch),
                          data=data, progress=say)
        result = measure_latency(bundle, runtimes=args.runtimes, batch=args.batch, seconds=args.seconds,
                                 min_iters=args.min_iters, progress=say)
        int8 = json.loads((Path(bundle) / "bundle.json").read_text()).get("int8")
    result["source"] = source
    if int8:  # the INT8 model's AUROC cost, measured at export on the run's test split
        result["int8"] = int8
    write_json_atomic(args.out, result)
    print(json.dumps({k: result[k] for k in ("runtimes", "skipped", "split", "image_size", "bank_size", "flops_per_image", "commit")},
                     indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
