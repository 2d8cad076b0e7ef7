"""Which scorer details matter: one change at a time on cached ImageNet Lite0 taps (MTD split).

    python benchmarks/scorer_variants.py base agg=1 pad=in pad=in:ratio=0.1 ...

Encoder taps (stage2, stage3, stage4) of the 762 training and 582 test images are
extracted once and cached (--cache); each VARIANT then builds patch features, a chunked
greedy coreset of all training patches and the blurred nearest-neighbour map, and scores
the test split. A variant is `key=value` pairs joined by `:` (`base` = no change):

    deep=stage3|stage4   the stride-16 tap concatenated to stage2 (default stage4)
    agg=K                K x K neighbourhood average (default 3; 1 = none)
    pad=ex|in            border average over valid cells (ex) or counting zero padding (in, PatchCore)
    ratio=R              coreset fraction (default 0.02; 1 = every training patch, no coreset)
    reduce=max|topk      image score: map maximum or mean of the top 1% of pixels
    border=B             image score ignores a B-pixel border
    blur=SIGMA           map smoothing in pixels (default 4)
    ctx=sub|cat          image context: subtract each image's mean feature (sub), or append it (cat)
    s5=W                 append the stride-32 stage5 tap (upsampled, scaled by W) for wider context
    tta=h                average the test map with the map of the mirrored image (mirrored back)

Each row also gives `uneven_pixel_auroc`, pixel AUROC within the MT_Uneven images alone (the
class that holds about 72% of all defect pixels and caps the pooled pixel AUROC).

--size Z resizes the images to Z x Z before the encoder (default 256, the configs' scorer
size; its own tap cache); maps are still scored at 256 x 256, so rows compare.

Rows are appended to benchmarks/results/scorer-variants.json. The production path
(`loupe bench quality`) is the reference; this script exists to find what moves it.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.encoder import Encoder, load_init_weights  # noqa: E402
from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.io import read_image  # noqa: E402
from pipeline.data.tensors import load_masks, resize_image  # noqa: E402
from pipeline.metrics import image_auroc, pixel_auroc  # noqa: E402
from pipeline.scoring.coreset import greedy_coreset  # noqa: E402
from pipeline.scoring.gaussian import GaussianBlur  # noqa: E402
from pipeline.scoring.knn import nearest_distance  # noqa: E402
from pipeline.steps import git_commit, read_samples, resolve_init_weights  # noqa: E402

MTD = ROOT.parent / "shared/data/magnetic-tile-defects/split.json"
OUT = ROOT / "benchmarks/results/scorer-variants.json"
S = 256


def load(samples: list, size: int = S) -> torch.Tensor:
    """uint8 [N, 1, S, S], resized as training does (area filter when shrinking)."""
    return torch.from_numpy(np.stack([resize_image(read_image(s.image, channels=1), size)[None] for s in samples]))


@torch.no_grad()
def taps(enc: Encoder, images: torch.Tensor) -> list[torch.Tensor]:
    """-> [stage2 [N, 40, 32, 32], stage3 [N, 80, 16, 16], stage4 [N, 112, 16, 16], stage5 [N, 192, 8, 8]] as float16."""
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, len(images), 16):
        for o, x in zip(outs, enc(images[i : i + 16].float() / 255)):
            o.append(x.half())
    return [torch.cat(o) for o in outs]


def tap_encoder() -> Encoder:
    """The ImageNet Lite0 encoder of `imagenet-lite0`, tapped at stage2..stage5, in eval mode."""
    cfg = load_config("imagenet-lite0")
    cfg.encoder.taps = ("stage2", "stage3", "stage4", "stage5")
    enc = Encoder(cfg.encoder)
    load_init_weights(enc, resolve_init_weights(cfg, None))
    return enc.eval()


def cached_taps(cache: Path, train: list, test: list, size: int = S) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(train taps, test taps) from `cache`, encoding the images and writing it first when missing."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    enc = tap_encoder()
    tr, te = taps(enc, load(train, size)), taps(enc, load(test, size))
    torch.save((tr, te), cache)
    return tr, te


def patches(tp: list[torch.Tensor], deep: str, agg: int, pad: str, ctx: str = "", s5: float = 0.0) -> torch.Tensor:
    """Tap list -> patch features [N, D, 32, 32] (stage2 + the deep tap upsampled; ctx=cat: [N, 2D, ..])."""
    s2, d = tp[0].float(), tp[2 if deep == "stage4" else 1].float()
    if agg > 1:
        s2 = F.avg_pool2d(s2, agg, 1, agg // 2, count_include_pad=pad == "in")
        d = F.avg_pool2d(d, agg, 1, agg // 2, count_include_pad=pad == "in")
    d = F.interpolate(d, size=s2.shape[-2:], mode="bilinear", align_corners=False)
    f = torch.cat([s2, d], 1)
    if s5:  # stage5 is already 8x8: no further averaging, just upsampled onto the stride-8 grid
        f = torch.cat([f, s5 * F.interpolate(tp[3].float(), size=s2.shape[-2:], mode="bilinear", align_corners=False)], 1)
    mean = f.mean((2, 3), keepdim=True)  # [N, D, 1, 1]: the image's average patch
    return f - mean if ctx == "sub" else torch.cat([f, mean.expand_as(f)], 1) if ctx == "cat" else f


def distance_maps(dist: torch.Tensor, smooth: GaussianBlur) -> torch.Tensor:
    """Patch distances [n, 1, h, w] -> maps [n, S, S] (upsampled, blurred: the Inspector's map tail)."""
    return smooth(F.interpolate(dist, size=(S, S), mode="bilinear", align_corners=False))[:, 0]


@torch.no_grad()
def anomaly_maps(test_batches: Iterable[torch.Tensor], bank: torch.Tensor, blur: float = 4.0) -> torch.Tensor:
    """Patch features [n, D, h, w] per batch, bank [B, D] -> blurred nearest-neighbour maps [N, S, S]."""
    bsq, smooth, maps = (bank * bank).sum(1), GaussianBlur(blur), []
    for f in test_batches:
        n, d, h, w = f.shape
        maps.append(distance_maps(nearest_distance(f.permute(0, 2, 3, 1).reshape(-1, d), bank, bsq, 4096).reshape(n, 1, h, w), smooth))
    return torch.cat(maps)


@torch.no_grad()
def evaluate(tr: list[torch.Tensor], te: list[torch.Tensor], labels: np.ndarray, masks: np.ndarray, uneven: np.ndarray, *,
             deep: str = "stage4", agg: int = 3, pad: str = "ex", ratio: float = 0.02, reduce: str = "max", border: int = 0,
             blur: float = 4.0, ctx: str = "", s5: float = 0.0, tta: str = "", te_flip: list[torch.Tensor] | None = None) -> dict:
    ft = torch.cat([patches([x[i : i + 64] for x in tr], deep, agg, pad, ctx, s5).permute(0, 2, 3, 1).flatten(0, 2)
                    for i in range(0, len(tr[0]), 64)])
    k = math.ceil(ratio * ft.shape[0])
    if ratio >= 1:  # every training patch: the upper bound any coreset approximates
        bank = ft.contiguous()
    else:
        sel = greedy_coreset(ft, k, generator=torch.Generator().manual_seed(0), proj_dim=64, chunk_size=20_000)
        bank = ft[sel].contiguous()
    del ft
    def test_maps(tp: list[torch.Tensor]) -> torch.Tensor:
        return anomaly_maps((patches([x[i : i + 16] for x in tp], deep, agg, pad, ctx, s5) for i in range(0, len(tp[0]), 16)), bank, blur)

    m = test_maps(te)
    if tta == "h":
        assert te_flip is not None
        m = (m + test_maps(te_flip).flip(-1)) / 2
    ms = (m[:, border:-border, border:-border] if border else m).flatten(1)
    s = ms.max(1).values if reduce == "max" else ms.topk(max(1, ms.shape[1] // 100), dim=1).values.mean(1)
    return {"image_auroc": round(image_auroc(labels, s.numpy()), 4), "pixel_auroc": round(pixel_auroc(masks, m.numpy()), 4),
            "uneven_pixel_auroc": round(pixel_auroc(masks[uneven], m.numpy()[uneven]), 4), "bank": k}


def parse(spec: str) -> dict:
    if spec == "base":
        return {}
    kw = dict(item.split("=", 1) for item in spec.split(":"))
    return {k: int(v) if k in ("agg", "border") else float(v) if k in ("ratio", "blur", "s5") else v for k, v in kw.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--manifest", type=Path, default=MTD)
    ap.add_argument("--cache", type=Path, default=None, help="tap cache (about 600 MB at 256; default /tmp/loupe-lite0-taps[-SIZE].pt)")
    ap.add_argument("--size", type=int, default=S, help="encoder input size (maps are scored at 256 either way)")
    args = ap.parse_args()
    args.cache = args.cache or Path(f"/tmp/loupe-lite0-taps{'' if args.size == S else f'-{args.size}'}.pt")
    torch.set_grad_enabled(False)
    train, _ = read_samples(args.manifest, "train", False, 1)
    test, _ = read_samples(args.manifest, "test", False, 1)
    labels, masks = np.array([s.label for s in test]), load_masks(test, S)
    uneven = np.array([Path(s.image).parent.parent.name == "MT_Uneven" for s in test])
    tr, te = cached_taps(args.cache, train, test, args.size)
    te_flip = None
    if any("tta=h" in v for v in args.variants):
        flip_cache = args.cache.with_name(args.cache.stem + "-mirrored.pt")
        if flip_cache.is_file():
            te_flip = torch.load(flip_cache, weights_only=True)
        else:
            te_flip = taps(tap_encoder(), load(test, args.size).flip(-1))
            torch.save(te_flip, flip_cache)
    rows = []
    if OUT.is_file():
        import json

        rows = json.loads(OUT.read_text())["rows"]
    for spec in args.variants:
        t0 = time.perf_counter()
        r = {"variant": spec + ("" if args.size == S else f":size={args.size}"), **evaluate(tr, te, labels, masks, uneven, te_flip=te_flip, **parse(spec)), "seconds": round(time.perf_counter() - t0),
             "commit": git_commit()}
        print(r, flush=True)
        rows.append(r)
        write_json_atomic(OUT, {"benchmark": "scorer variants on cached ImageNet Lite0 taps, MTD split (all 762 training images)",
                                "coreset": "greedy k-center, 64-d projection, chunks of 20k", "blur_sigma": 4.0, "rows": rows})


if __name__ == "__main__":
    main()
