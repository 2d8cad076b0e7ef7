"""Cross-fitted patch denoising: keep unlabeled defects out of the memory bank.

Nobody checks every "good" line image, so some training images are defective. The greedy
k-center coreset picks the patches farthest from everything else first, so it takes their
defect patches into the bank almost surely, and at test time the same kind of defect finds a
near neighbour there and looks normal: 5% defective training images cost the MTD default 4.3
points image AUROC, all of it through the bank (the clean encoder with the contaminated bank
loses more). Defects are rare and varied, so a defect patch is far from every *other* image's
patches, while normal surface finds its neighbours among them (SoftPatch, Jiang et al.,
NeurIPS 2022, does this with LOF). Each half of the images is scored against a coreset of the
other half, so no patch is scored against its own image, and the farthest `fraction` of all
patches is dropped before the coreset is selected (`denoise_fraction`).

The same distances rank whole images: an image's largest patch distance is its cross-fitted
anomaly score, and `trim_fraction` drops the highest-scoring share of the bank images before
anything else (keep_mask over the image maxima). A patch-level cut takes rare normal surface
from every image; an image-level cut takes every patch of a few images, defect and all.

One pass misses the defective images whose kind recurs: a Blowhole in one half finds the
other half's Blowholes in its reference and looks normal ("vouching"). `trim_rounds` > 1 trims
iteratively, as trimmed estimators do: each later round draws new halves and scores every image
against the other half's images that survived the previous round, so the twins the first round
caught no longer vouch. `trim_fence` > 0 makes the last round's cut data-driven: of the top
`trim_fraction`, only images whose score sits above Q3 + fence * IQR of the log image scores are
dropped (the rule of `calibration_fence`), so a clean list loses little or nothing.

`trim_score: leave_one_out` ranks the images as the threshold calibration scores them instead
(leave_one_out.py): a coreset of all (in later rounds: the kept) images, and each image's patches
against it less the rows taken from that image, through the inspector's own map and reduction
(upsampled, blurred, max). The reference is then the whole list rather than half of it, and the
score is the smoothed one the test images get rather than one patch's raw distance.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pipeline.metrics.calibration import calibration_outliers
from pipeline.scoring.coreset import coreset_size, greedy_coreset
from pipeline.scoring.knn import nearest_distance
from pipeline.scoring.leave_one_out import leave_one_out_maps


@torch.no_grad()
def cross_fit_distances(feats: torch.Tensor, n_images: int, bank_ratio: float, max_bank: int, generator: torch.Generator,
                        query_chunk: int = 16384, *, perm: torch.Tensor | None = None, reference: torch.Tensor | None = None,
                        **coreset_kw) -> torch.Tensor:
    """feats [n_images * P, D] (image-major patch features) -> distance of each patch [n_images * P]
    to the nearest row of a coreset of the *other* half of the images (`bank_ratio` of its
    patches, at most `max_bank` rows). Halves are the two ends of `perm` [n_images] (drawn with
    `generator` when None). `reference` bool [n_images] limits which images may serve as the
    other half's reference (every image is still scored); a half with no reference image left
    falls back to all of it."""
    if n_images < 2:
        return torch.zeros(feats.shape[0])
    p, dim = feats.shape[0] // n_images, feats.shape[1]
    if p * n_images != feats.shape[0]:
        raise ValueError(f"{feats.shape[0]} patch rows do not split into {n_images} images")
    per_image = feats.view(n_images, p, dim)
    if perm is None:
        perm = torch.randperm(n_images, generator=generator)
    halves = (perm[: n_images // 2], perm[n_images // 2 :])
    out = torch.empty(n_images, p)
    for mine, other in (halves, halves[::-1]):
        if reference is not None and reference[other].any():
            other = other[reference[other]]
        ref = per_image[other].reshape(-1, dim)  # [len(other) * P, D]
        bank = ref[greedy_coreset(ref, coreset_size(ref.shape[0], bank_ratio, max_bank), generator=generator, **coreset_kw)]
        bank_sq = (bank * bank).sum(dim=1)
        q = per_image[mine].reshape(-1, dim)
        d = torch.cat([nearest_distance(c, bank, bank_sq) for c in q.split(query_chunk)])  # [len(mine) * P]
        out[mine] = d.view(len(mine), p)
    return out.reshape(-1)


@torch.no_grad()
def leave_one_out_image_scores(feats: torch.Tensor, n_images: int, bank_ratio: float, max_bank: int, generator: torch.Generator,
                               to_scores: Callable[[torch.Tensor], torch.Tensor], grid: tuple[int, int] | None = None,
                               reference: torch.Tensor | None = None, chunk: int = 4096, batch: int = 16,
                               **coreset_kw) -> torch.Tensor:
    """feats [n_images * P, D] (image-major) -> image scores [n_images]: each image's patches against a
    coreset of the `reference` images' patches (bool [n_images]; all when None) less the rows taken
    from that image (`leave_one_out_maps`, as the calibration scores them), turned into scores by
    `to_scores` (distances [k, 1, h, w] -> [k]; `grid` (h, w) with h * w = P, (P, 1) when None)."""
    p, dim = feats.shape[0] // n_images, feats.shape[1]
    if p * n_images != feats.shape[0]:
        raise ValueError(f"{feats.shape[0]} patch rows do not split into {n_images} images")
    grid = (p, 1) if grid is None else grid
    ref = torch.arange(n_images) if reference is None else reference.nonzero().squeeze(1)
    pool = feats.view(n_images, p, dim)[ref].reshape(-1, dim)  # [len(ref) * P, D]
    sel = greedy_coreset(pool, coreset_size(pool.shape[0], bank_ratio, max_bank), generator=generator, **coreset_kw)
    return leave_one_out_maps(feats, torch.arange(n_images), pool[sel], ref.repeat_interleave(p)[sel], grid, to_scores,
                              chunk=chunk, batch=batch)


def image_keep_mask(feats: torch.Tensor, n_images: int, fraction: float, bank_ratio: float, max_bank: int,
                    generator: torch.Generator, rounds: int = 1, fence: float = 0.0,
                    to_scores: Callable[[torch.Tensor], torch.Tensor] | None = None, grid: tuple[int, int] | None = None,
                    **coreset_kw) -> torch.Tensor:
    """feats [n_images * P, D] (image-major) -> bool [n_images]: False for the floor(fraction * n_images)
    images with the largest cross-fitted patch distance (their most anomalous patch).

    rounds > 1: each round after the first scores every image against the other half's images the
    previous round kept (new halves each round; all rounds' halves are drawn first, from `generator`).
    fence > 0: the last round drops only those of its top share whose score is a Tukey outlier
    (`calibration_outliers` over all image scores).
    to_scores (distance grids [k, 1, h, w] -> image scores [k]; `grid` (h, w), (P, 1) when None): rank by
    `leave_one_out_image_scores` instead, each round against a coreset of the images the previous round kept."""
    if rounds < 1:
        raise ValueError(f"trim rounds must be >= 1, got {rounds}")
    perms = [torch.randperm(n_images, generator=generator) for _ in range(rounds)] if to_scores is None else [None] * rounds
    keep = torch.ones(n_images, dtype=torch.bool)
    for perm in perms:
        if to_scores is None:
            dist = cross_fit_distances(feats, n_images, bank_ratio, max_bank, generator, perm=perm, reference=keep, **coreset_kw)
            scores = dist.view(n_images, -1).amax(dim=1)  # [n_images]
        else:
            scores = leave_one_out_image_scores(feats, n_images, bank_ratio, max_bank, generator, to_scores, grid, reference=keep,
                                                **coreset_kw)
        keep = keep_mask(scores, fraction)
    if fence > 0:
        keep |= torch.from_numpy(~calibration_outliers(scores.numpy(), fence))
    return keep


def keep_mask(distances: torch.Tensor, fraction: float) -> torch.Tensor:
    """distances [M] -> bool [M]: False for the floor(fraction * M) largest (ties broken by index)."""
    m = distances.shape[0]
    drop = math.floor(fraction * m)
    keep = torch.ones(m, dtype=torch.bool)
    if drop > 0:
        keep[torch.topk(distances, drop).indices] = False
    return keep
