"""What coreset selection costs and what it buys, on the Magnetic Tile Defects split.

    python benchmarks/coreset.py [--config imagenet-lite0] [--epochs 0]

Patch features of the training images are extracted once; each variant then
selects a memory bank of the same size (global greedy k-center, chunked greedy,
random subset) and scores the test split with the identical map pipeline.
Writes benchmarks/results/coreset.json.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.encoder import Encoder, load_init_weights  # noqa: E402
from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.tensors import load_images, load_masks  # noqa: E402
from pipeline.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402
from pipeline.scoring.coreset import greedy_coreset  # noqa: E402
from pipeline.scoring.fit import extract_patch_features, split_holdout  # noqa: E402
from pipeline.scoring.inspector import Inspector  # noqa: E402
from pipeline.scoring.knn import nearest_distance  # noqa: E402
from pipeline.steps import git_commit, read_samples, resolve_init_weights  # noqa: E402

MTD = ROOT.parent / "shared/data/magnetic-tile-defects/split.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=MTD)
    ap.add_argument("--config", default="imagenet-lite0")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.02, 0.1])
    ap.add_argument("--variants", nargs="*", default=None, help="only these selection variants (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/coreset.json")
    args = ap.parse_args()
    cfg = load_config(args.config)
    sc = cfg.scorer
    encoder = Encoder(cfg.encoder)
    init = resolve_init_weights(cfg, None)
    if init:
        load_init_weights(encoder, init)
    encoder.eval()
    torch.set_grad_enabled(False)
    train, _ = read_samples(args.manifest, "train", False, cfg.encoder.in_channels)
    test, _ = read_samples(args.manifest, "test", False, cfg.encoder.in_channels)
    g = torch.Generator().manual_seed(sc.seed)
    bank_idx, _ = split_holdout(len(train), sc.holdout_fraction, g)
    probe = Inspector(encoder, sc, bank_size=1).eval()
    t0 = time.perf_counter()
    feats = extract_patch_features(probe, load_images([train[i] for i in bank_idx], sc.image_size))
    feature_seconds = time.perf_counter() - t0
    test_images = load_images(test, sc.image_size)
    test_feats = [probe.features(test_images[i : i + 16].float() / 255) for i in range(0, len(test), 16)]
    labels = torch.tensor([s.label for s in test]).numpy()
    masks = load_masks(test, sc.image_size)

    def score(bank: torch.Tensor) -> dict:
        insp = Inspector(encoder, sc, bank.shape[0]).eval()
        insp.set_bank(bank)
        maps = []
        for f in test_feats:
            n, d, h, w = f.shape
            dist = nearest_distance(f.permute(0, 2, 3, 1).reshape(-1, d), insp.memory_bank, insp.bank_sq, sc.knn_chunk)
            dist = torch.nn.functional.interpolate(dist.reshape(n, 1, h, w), size=(sc.image_size,) * 2, mode="bilinear", align_corners=False)
            maps.append(insp.blur(dist)[:, 0])
        m = torch.cat(maps)
        s = insp.reduce(m).numpy()
        m = m.numpy()
        return {"image_auroc": image_auroc(labels, s), "pixel_auroc": pixel_auroc(masks, m), "aupro": aupro(masks, m)}

    def save(rows: list[dict]) -> None:  # after every ratio, so a stopped run keeps what it measured
        write_json_atomic(args.out, {"config": args.config, "n_patches": int(feats.shape[0]), "feature_dim": int(feats.shape[1]),
                                     "feature_seconds": feature_seconds, "rows": rows, "commit": git_commit(),
                                     "torch_threads": torch.get_num_threads()})

    rows: list[dict] = []
    for ratio in args.ratios:
        k = min(feats.shape[0], math.ceil(ratio * feats.shape[0]))
        variants = {
            "global_greedy_proj64": dict(proj_dim=64, chunk_size=None),
            "chunked_100k_proj64": dict(proj_dim=64, chunk_size=100_000),
            "chunked_20k_proj64": dict(proj_dim=64, chunk_size=20_000),
            "chunked_100k_refine4_proj64": dict(proj_dim=64, chunk_size=100_000, refine=4.0),
        }
        if args.variants is not None:
            variants = {n: kw for n, kw in variants.items() if n in args.variants}
        if k > 20_000:  # one global pass would take hours on 2 cores: that is the point of chunking
            variants.pop("global_greedy_proj64", None)
        for name, kw in variants.items():
            t = time.perf_counter()
            sel = greedy_coreset(feats, k, generator=torch.Generator().manual_seed(0), **kw)
            sec = time.perf_counter() - t
            r = {"variant": name, "ratio": ratio, "bank_size": k, "select_seconds": sec, **score(feats[sel])}
            rows.append(r)
            print(r, flush=True)
        if args.variants is None or "random_subset" in args.variants:
            sel = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(0))[:k]
            r = {"variant": "random_subset", "ratio": ratio, "bank_size": k, "select_seconds": 0.0, **score(feats[sel])}
            rows.append(r)
            print(r, flush=True)
        save(rows)

    save(rows)


if __name__ == "__main__":
    main()
