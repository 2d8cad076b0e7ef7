"""How well the image trim's ranking finds the defective images hidden in a training list.

    python benchmarks/trim_ranking.py RUN_DIR LIST [--truth MANIFEST] [--tag TAG]

RUN_DIR is a `loupe pretrain` folder; LIST a manifest whose `train` images include defective
ones labelled good (`contaminated.json` from `robustness.py --manifests-only`); `--truth`
(default: the MTD split) says which of them are defective (label 1 in any of its lists). Every
training image is scored as `scorer.trim_score: leave_one_out` scores it in the fit's first trim
round (`pipeline/scoring/denoise.py`: a coreset of all images, each against it less its own rows,
through the inspector's map and reduction, same seed), and the script reports how many defective
images each top share holds, their ranks, the ranking's AUROC, and how many a second round (every
image against a coreset of the images a 15% trim kept) puts in its top 15%. Results go to
benchmarks/results/trim-ranking.json under TAG (default: RUN_DIR's encoder digest).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.contrastive.pretrain import load_encoder  # noqa: E402
from pipeline.data.sources import load_samples  # noqa: E402
from pipeline.data.tensors import load_images  # noqa: E402
from pipeline.metrics.image import image_auroc  # noqa: E402
from pipeline.scoring.denoise import keep_mask, leave_one_out_image_scores  # noqa: E402
from pipeline.scoring.fit import TRIM_SEED_OFFSET, bank_patch_features, coreset_options, inspector_image_scores  # noqa: E402
from pipeline.steps import git_commit, load_run_config, now  # noqa: E402

OUT = ROOT / "benchmarks/results/trim-ranking.json"
MTD = ROOT.parent / "shared/data/magnetic-tile-defects/split.json"
SHARES = (0.05, 0.1, 0.15, 0.2, 0.25)


def defective_images(truth: Path) -> set[str]:
    """Resolved paths of the images `truth` labels defective (label 1 in any list)."""
    rows = [row for rows in json.loads(truth.read_text()).values() if isinstance(rows, list) for row in rows]
    return {str((truth.parent / row[0]).resolve()) for row in rows if int(row[2]) == 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("list", type=Path)
    ap.add_argument("--truth", type=Path, default=MTD)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    cfg = load_run_config(args.run)
    sc = cfg.scorer
    encoder, _ = load_encoder(args.run / "encoder.pt")
    samples = load_samples(args.list, "train")
    defective = defective_images(args.truth)
    bad = np.array([str(Path(s.image).resolve()) in defective for s in samples])
    if not bad.any():
        raise SystemExit(f"none of {args.list}'s training images is defective according to {args.truth}; pass --truth")
    images = load_images(samples, sc.image_size, cfg.encoder.in_channels)
    probe, feats, _, grid = bank_patch_features(encoder.eval(), images, sc)  # feats [N * h * w, D]
    n = len(samples)

    def scores(reference: torch.Tensor | None) -> np.ndarray:  # [n], as the fit's trim computes them
        return leave_one_out_image_scores(feats, n, sc.coreset_ratio, sc.max_bank,
                                          torch.Generator().manual_seed(sc.seed + TRIM_SEED_OFFSET), inspector_image_scores(probe),
                                          grid, reference=reference, **coreset_options(sc)).numpy()

    first = scores(None)
    order = np.argsort(-first, kind="stable")
    ranks = np.empty(n, dtype=int)
    ranks[order] = np.arange(n)
    kept = keep_mask(torch.from_numpy(first), 0.15)
    second = scores(kept)
    top2 = np.argsort(-second, kind="stable")[: math.floor(0.15 * n)]
    entry = {
        "run": str(args.run), "list": str(args.list), "n_images": n, "n_defective": int(bad.sum()),
        "encoder_digest": json.loads((args.run / "pretrain.json").read_text()).get("encoder_digest"),
        "defective_in_top": {str(f): int(bad[order[: math.floor(f * n)]].sum()) for f in SHARES},
        "defective_ranks": sorted(int(r) for r in ranks[bad]),
        "ranking_auroc": image_auroc(bad.astype(int), first),
        "second_round_defective_in_top_0.15": int(bad[top2].sum()),
        "commit": git_commit(), "created": now(),
    }
    tag = args.tag or entry["encoder_digest"] or args.run.name
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[tag] = entry
    write_json_atomic(OUT, results)
    print(json.dumps({k: entry[k] for k in ("n_defective", "defective_in_top", "ranking_auroc",
                                            "second_round_defective_in_top_0.15")}), f"-> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
