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
"""
from __future__ import annotations

import math

import torch

from pipeline.scoring.coreset import coreset_size, greedy_coreset
from pipeline.scoring.knn import nearest_distance


@torch.no_grad()
def cross_fit_distances(feats: torch.Tensor, n_images: int, bank_ratio: float, max_bank: int, generator: torch.Generator,
                        query_chunk: int = 16384, **coreset_kw) -> torch.Tensor:
    """feats [n_images * P, D] (image-major patch features) -> distance of each patch [n_images * P]
    to the nearest row of a coreset of the *other* half of the images (`bank_ratio` of its
    patches, at most `max_bank` rows). Halves are drawn with `generator`."""
    if n_images < 2:
        return torch.zeros(feats.shape[0])
    p, dim = feats.shape[0] // n_images, feats.shape[1]
    if p * n_images != feats.shape[0]:
        raise ValueError(f"{feats.shape[0]} patch rows do not split into {n_images} images")
    per_image = feats.view(n_images, p, dim)
    perm = torch.randperm(n_images, generator=generator)
    halves = (perm[: n_images // 2], perm[n_images // 2 :])
    out = torch.empty(n_images, p)
    for mine, other in (halves, halves[::-1]):
        ref = per_image[other].reshape(-1, dim)  # [len(other) * P, D]
        bank = ref[greedy_coreset(ref, coreset_size(ref.shape[0], bank_ratio, max_bank), generator=generator, **coreset_kw)]
        bank_sq = (bank * bank).sum(dim=1)
        q = per_image[mine].reshape(-1, dim)
        d = torch.cat([nearest_distance(c, bank, bank_sq) for c in q.split(query_chunk)])  # [len(mine) * P]
        out[mine] = d.view(len(mine), p)
    return out.reshape(-1)


def image_keep_mask(feats: torch.Tensor, n_images: int, fraction: float, bank_ratio: float, max_bank: int,
                    generator: torch.Generator, **coreset_kw) -> torch.Tensor:
    """feats [n_images * P, D] (image-major) -> bool [n_images]: False for the floor(fraction * n_images)
    images with the largest cross-fitted patch distance (their most anomalous patch)."""
    dist = cross_fit_distances(feats, n_images, bank_ratio, max_bank, generator, **coreset_kw)
    return keep_mask(dist.view(n_images, -1).amax(dim=1), fraction)


def keep_mask(distances: torch.Tensor, fraction: float) -> torch.Tensor:
    """distances [M] -> bool [M]: False for the floor(fraction * M) largest (ties broken by index)."""
    m = distances.shape[0]
    drop = math.floor(fraction * m)
    keep = torch.ones(m, dtype=torch.bool)
    if drop > 0:
        keep[torch.topk(distances, drop).indices] = False
    return keep
