"""Threshold calibration when some held-out "good" images are defective (cached ImageNet Lite0 taps, MTD split).

    python benchmarks/threshold.py [--ratio 0.02] [--seeds 0 1 2 3 4] [--fence 1.5 3 6] [--holdout 0.1]
    python benchmarks/threshold.py --leave-one-out [--calibration-images 300]

The fit holds out a tenth of the training images and calibrates the false-alarm threshold on
their image scores. When the unlabeled training list holds defects (benchmarks/robustness.py's
contaminated list: 5% defective, the same 41 images), some of them land in the held-out tenth
and, being the highest scores there, set the threshold: recall at the threshold collapses.

For each training list (clean, contaminated) and each holdout seed, this harness does what the
fit does on the features of benchmarks/scorer_variants.py (stage2 + stage4, zero-padded 3x3
average): `split_holdout` (`--holdout`), a greedy k-center bank of `--ratio` of the other images'
patches, image score = maximum of the blurred map. It then calibrates the threshold for a 1%
false-alarm target with each rule and reports the false-alarm rate and recall it gives on the
reduced test list (good and defective test images, the 41 moved ones excluded):

- `quantile`: the empirical quantile of all held-out scores (`calibrate_threshold`, the fit's rule
  before `scorer.calibration_fence`);
- `fence=K`: the same after dropping held-out scores above the upper fence of their log scores,
  Q3 + K * IQR (`pipeline.metrics.calibration.calibration_outliers`, `scorer.calibration_fence`);
- `gauss-mad`: median + z * 1.4826 * MAD of the log scores (a robust normal tail, for comparison).

`--leave-one-out` does what `scorer.calibration: leave_one_out` does instead: every image feeds
the bank (seeded coreset per seed), and `--calibration-images` of them (a seeded sample; 0: all)
are scored against the bank less their own rows (`pipeline.scoring.leave_one_out`); the same
rules then set the threshold from those scores.

Rows go to benchmarks/results/threshold.json, one entry per `--holdout` share (the fit's
`scorer.holdout_fraction`, 0.1 by default), or `leave_one_out=N` for N calibration images.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scorer_variants import MTD, anomaly_maps, cached_taps, distance_maps, greedy_coreset, image_auroc, read_samples  # noqa: E402
from support_filter import training_sets  # noqa: E402

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.metrics import robust_threshold  # noqa: E402
from pipeline.scoring.fit import split_holdout  # noqa: E402
from pipeline.scoring.gaussian import GaussianBlur  # noqa: E402
from pipeline.scoring.leave_one_out import SAMPLE_SEED_OFFSET, calibration_sample, leave_one_out_maps  # noqa: E402
from pipeline.steps import git_commit  # noqa: E402

OUT = ROOT / "benchmarks/results/threshold.json"
TARGET = 0.01


def image_scores(f: torch.Tensor, bank: torch.Tensor) -> np.ndarray:
    """Patch features [n, D, h, w] -> image scores [n] (maximum of the blurred map)."""
    return anomaly_maps(f.split(16), bank).flatten(1).max(1).values.numpy()


def thresholds(hold: np.ndarray, fences: list[float]) -> dict[str, tuple[float, int]]:
    """Held-out scores [M] -> {rule: (threshold, held-out scores it set aside)}."""
    out = {}
    for name, k in [("quantile", 0.0)] + [(f"fence={k:g}", k) for k in fences]:  # fence 0: every held-out score
        thr, drop = robust_threshold(hold, TARGET, k)
        out[name] = (thr, int(drop.sum()))
    logs = np.log(hold)
    med = np.median(logs)
    mad = 1.4826 * np.median(np.abs(logs - med))
    out["gauss-mad"] = (float(np.exp(med + NormalDist().inv_cdf(1 - TARGET) * mad)), 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.02)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="holdout splits")
    ap.add_argument("--fence", type=float, nargs="+", default=[1.5, 3.0, 6.0])
    ap.add_argument("--holdout", type=float, default=0.1, help="share of the training images held out (scorer.holdout_fraction)")
    ap.add_argument("--leave-one-out", action="store_true", help="every image in the bank; calibrate on leave-one-out scores")
    ap.add_argument("--calibration-images", type=int, default=300, help="--leave-one-out: images scored (0: all)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/loupe-lite0-taps.pt"), help="scorer_variants.py's tap cache (built when missing)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    train, _ = read_samples(MTD, "train", False, 1)
    test, _ = read_samples(MTD, "test", False, 1)
    tr, te = cached_taps(args.cache, train, test)
    sets, f_test, keep = training_sets(tr, te)
    n_clean = len(sets["clean"])
    labels = np.array([s.label for s in test])[keep]
    rows = []
    for name, f_all in sets.items():
        n_all = len(f_all)
        for seed in args.seeds:
            t0 = time.perf_counter()
            if args.leave_one_out:
                bank_idx = torch.arange(n_all)
                hold_idx = calibration_sample(n_all, args.calibration_images, torch.Generator().manual_seed(seed + SAMPLE_SEED_OFFSET))
            else:
                bank_idx, hold_idx = split_holdout(n_all, args.holdout, torch.Generator().manual_seed(seed))
            fb = f_all[bank_idx].permute(0, 2, 3, 1).reshape(-1, f_all.shape[1]).contiguous()
            sel = greedy_coreset(fb, math.ceil(args.ratio * len(fb)), generator=torch.Generator().manual_seed(seed), proj_dim=64, chunk_size=20_000)
            bank = fb[sel].contiguous()
            del fb
            if args.leave_one_out:  # each sampled image against the bank less the rows selected from it
                h, w = f_all.shape[-2:]
                q = f_all[hold_idx].permute(0, 2, 3, 1).reshape(-1, f_all.shape[1]).contiguous()
                smooth = GaussianBlur(4.0)
                maps = leave_one_out_maps(q, hold_idx, bank, torch.arange(n_all).repeat_interleave(h * w)[sel], (h, w),
                                          lambda d: distance_maps(d, smooth))
                hold = maps.flatten(1).max(1).values.numpy()
            else:
                hold = image_scores(f_all[hold_idx], bank)
            s_test = image_scores(f_test, bank)
            defective_held = hold_idx >= n_clean
            base = {"train": name, "seed": seed, "ratio": args.ratio, "holdout": 0.0 if args.leave_one_out else args.holdout,
                    "calibration": "leave_one_out" if args.leave_one_out else "holdout", "n_holdout": len(hold_idx),
                    "defective_in_holdout": int(defective_held.sum()), "image_auroc": round(image_auroc(labels, s_test), 4)}
            for rule, (thr, n_drop) in thresholds(hold, args.fence).items():
                r = {**base, "rule": rule, "set_aside": n_drop, "threshold": round(float(thr), 5),
                     "false_alarm_rate": round(float(np.mean(s_test[labels == 0] >= thr)), 4),
                     "recall": round(float(np.mean(s_test[labels == 1] >= thr)), 4),
                     "holdout_defective_scores": [round(float(x), 4) for x in hold[defective_held.numpy()]],
                     "holdout_good_max": round(float(hold[~defective_held.numpy()].max()), 4),
                     "seconds": round(time.perf_counter() - t0), "commit": git_commit()}
                print({k: v for k, v in r.items() if k != "commit"}, flush=True)
                rows.append(r)
    summary = {}
    for train_set in sets:
        for rule in dict.fromkeys(r["rule"] for r in rows):
            sel_rows = [r for r in rows if r["train"] == train_set and r["rule"] == rule]
            summary[f"{train_set}/{rule}"] = {"false_alarm_rate": round(float(np.mean([r["false_alarm_rate"] for r in sel_rows])), 4),
                                             "recall": round(float(np.mean([r["recall"] for r in sel_rows])), 4),
                                             "set_aside": round(float(np.mean([r["set_aside"] for r in sel_rows])), 2)}
    for k, v in summary.items():
        print(f"{k:>28}: {v}")
    runs = json.loads(OUT.read_text())["runs"] if OUT.is_file() else {}
    key = f"leave_one_out={args.calibration_images}" if args.leave_one_out else f"holdout={args.holdout:g}"
    runs[key] = {"seeds": args.seeds, "summary": summary, "rows": rows}
    write_json_atomic(OUT, {"benchmark": "threshold calibration with defective held-out images, cached ImageNet Lite0 taps, MTD split, "
                                         "reduced test list (541), 1% false-alarm target, means over holdout seeds", "runs": runs})


if __name__ == "__main__":
    main()
