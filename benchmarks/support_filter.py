"""Contamination and the bank-row support filter on cached ImageNet Lite0 taps (MTD split).

    python benchmarks/support_filter.py [--ratio 0.02] [--min-support 1 2] [--trim 0 0.1]

The contaminated training list of benchmarks/robustness.py (5% defective, seeded; the same 41
images) on the features of benchmarks/scorer_variants.py (stage2 + stage4, zero-padded 3x3
average, its tap cache): a greedy k-center bank of `--ratio` of the patches, clean and
contaminated, each with the rows of support below each `--min-support` dropped
(`pipeline.scoring.support.row_support`, as `scorer.min_support` does in the fit), scored on
the reduced test list. Also reports how many bank rows came from the contaminating images.
`--trim F` first drops the fraction F of training images with the highest cross-fitted image
score (`pipeline.scoring.denoise.image_keep_mask`, as `scorer.trim_fraction` does in the fit;
cross-fit banks at `--ratio`) and reports how many contaminating images it kept.
A quick harness (minutes, not the hour of a full robustness run) to find what keeps unlabeled
defects out of the bank; rows go to benchmarks/results/support-filter.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from robustness import _absolute, contaminate  # noqa: E402
from scorer_variants import MTD, S, anomaly_maps, greedy_coreset, image_auroc, load_masks, patches, pixel_auroc, read_samples  # noqa: E402

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.scoring.support import row_support  # noqa: E402
from pipeline.scoring.denoise import image_keep_mask  # noqa: E402
from pipeline.steps import git_commit  # noqa: E402

OUT = ROOT / "benchmarks/results/support-filter.json"


def feats(tp: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Patch features of the images `idx` -> [n, 152, 32, 32]."""
    return torch.cat([patches([x[idx[i : i + 64]] for x in tp], "stage4", 3, "in") for i in range(0, len(idx), 64)])


def training_sets(tr: list[torch.Tensor], te: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, np.ndarray]:
    """Train and test taps -> ({"clean": [762, ..], "contaminated": [803, ..]} patch features, the reduced
    test list's features, bool [582] over the test list: kept in it, i.e. not moved into training).

    The contaminated list is robustness.py's (5% defective, seed 0): the clean images, then the moved ones.
    """
    split = json.loads(MTD.read_text())
    split = {n: _absolute(MTD, split[n]) for n in ("train", "test")}
    _, moved = contaminate(split, 0.05, 0)
    moved_img = {r[0] for r in moved}
    is_moved = torch.tensor([r[0] in moved_img for r in split["test"]])
    f_clean = feats(tr, torch.arange(len(tr[0])))
    sets = {"clean": f_clean, "contaminated": torch.cat([f_clean, feats(te, torch.nonzero(is_moved).flatten())])}
    return sets, feats(te, torch.nonzero(~is_moved).flatten()), (~is_moved).numpy()


def score(bank: torch.Tensor, test: torch.Tensor, labels: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    m = anomaly_maps(test.split(16), bank)
    return {"image_auroc": round(image_auroc(labels, m.flatten(1).max(1).values.numpy()), 4), "pixel_auroc": round(pixel_auroc(masks, m.numpy()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.02)
    ap.add_argument("--min-support", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--trim", type=float, nargs="+", default=[0.0],
                    help="drop this fraction of training images, the highest cross-fitted image scores, before the bank")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/loupe-lite0-taps.pt"), help="scorer_variants.py's tap cache (run it once first)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if not args.cache.is_file():
        raise SystemExit(f"{args.cache} missing: run `python benchmarks/scorer_variants.py base` once to build the tap cache")
    tr, te = torch.load(args.cache, weights_only=True)
    test, _ = read_samples(MTD, "test", False, 1)
    sets, f_test, keep = training_sets(tr, te)
    f_clean = sets["clean"]
    labels, masks = np.array([s.label for s in test])[keep], load_masks(test, S)[keep]
    rows = []
    for (name, fb_all), trim in itertools.product(sets.items(), args.trim):
        t0 = time.perf_counter()
        n_all, d, h, w = fb_all.shape
        flat = fb_all.permute(0, 2, 3, 1).reshape(-1, d).contiguous()  # [n_all * h * w, d], image-major
        kept = torch.arange(n_all)
        if trim:
            keep_img = image_keep_mask(flat, n_all, trim, args.ratio, 10**9, torch.Generator().manual_seed(0), proj_dim=64, chunk_size=20_000)
            kept = torch.nonzero(keep_img).flatten()
            flat = flat.view(n_all, h * w, d)[kept].reshape(-1, d)
        n = len(kept)
        sel = greedy_coreset(flat, math.ceil(args.ratio * len(flat)), generator=torch.Generator().manual_seed(0), proj_dim=64, chunk_size=20_000)
        bank = flat[sel].contiguous()
        sup = row_support(flat, torch.arange(n).repeat_interleave(h * w), bank)
        from_moved = int((kept[sel // (h * w)] >= len(f_clean)).sum())
        del flat
        for m in args.min_support:
            r = {"train": name, "ratio": args.ratio, "min_support": m, "trim": trim, "images": n,
                 "contaminants_kept": int((kept >= len(f_clean)).sum()) if name == "contaminated" else 0, "bank": int((sup >= m).sum()), "bank_before_filter": len(bank),
                 "rows_from_contaminants": from_moved, "rows_support_1": int((sup == 1).sum()),
                 **score(bank[sup >= m], f_test, labels, masks), "seconds": round(time.perf_counter() - t0), "commit": git_commit()}
            print(r, flush=True)
            rows.append(r)
    old = json.loads(OUT.read_text())["rows"] if OUT.is_file() else []
    write_json_atomic(OUT, {"benchmark": "support filter on cached ImageNet Lite0 taps, MTD split, 5% contaminated (robustness.py's 41 images), "
                                         "reduced test list (541)", "rows": old + rows})


if __name__ == "__main__":
    main()
