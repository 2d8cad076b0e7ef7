"""Leave-one-image-out calibration: threshold scores without holding images out of the bank.

The false-alarm threshold needs scores of good images the bank has not seen. Holding a tenth
of the training images out of the bank gives them, but the bank then lacks that tenth of the
normal surface, and the threshold rests on the largest of 76 scores (on MTD with ImageNet Lite0
features, `imagenet-lite0`: image AUROC 0.969 with a tenth held out, 0.972 with every image in
the bank and this calibration; README, "What moved the ImageNet scorer"). Here every training image feeds the bank, and a sample of
them is scored against the bank *without the rows that came from that image*: its patches
must find their neighbours among other images' rows, as an unseen image's would. The bank
is not re-selected without the image (that would cost a coreset per image), so the rows the
coreset spent on the image are simply missing: its unusual patches keep their distance, which
errs towards a higher threshold, not a lower one.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.scoring.knn import nearest_distance


@torch.no_grad()
def leave_one_out_distances(queries: torch.Tensor, query_image: torch.Tensor, bank: torch.Tensor, row_image: torch.Tensor,
                            chunk: int = 4096) -> torch.Tensor:
    """queries [M, D] patch features, query_image [M] (long, their image ids), bank [B, D],
    row_image [B] (long, the image each bank row was selected from) -> [M] distance of each
    query to its nearest bank row from *another* image (inf if there is none).

    Rows from none of the queries' images are searched as `knn.nearest_distance` does (one
    chunked matmul); only the few rows of the queries' own images need the per-query mask.
    """
    own = torch.isin(row_image, torch.unique(query_image))  # [B]
    best_sq = torch.full((queries.shape[0],), float("inf"))
    if (~own).any():
        best_sq = nearest_distance(queries, bank[~own], chunk=chunk) ** 2
    if own.any():
        mine, mine_img = bank[own], row_image[own]  # [b, D], [b]
        for s in range(0, queries.shape[0], chunk):
            q = queries[s : s + chunk]
            d = torch.cdist(q, mine).square()  # [m, b]
            d = d.masked_fill(query_image[s : s + chunk, None] == mine_img[None, :], float("inf"))
            best_sq[s : s + chunk] = torch.minimum(best_sq[s : s + chunk], d.min(dim=1).values)
    return best_sq.sqrt()


SAMPLE_SEED_OFFSET = 3  # the sample's generator is seeded with scorer.seed + this (fit and INT8 re-fit draw the same sample)


def calibration_sample(n_images: int, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded, sorted indices of at most `limit` of n_images (all when limit <= 0 or n_images <= limit)."""
    if limit <= 0 or n_images <= limit:
        return torch.arange(n_images)
    return torch.randperm(n_images, generator=generator)[:limit].sort().values


@torch.no_grad()
def leave_one_out_maps(patch_feats: torch.Tensor, image_ids: torch.Tensor, bank: torch.Tensor, row_image: torch.Tensor,
                       grid: tuple[int, int], to_map: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4096,
                       batch: int = 16) -> torch.Tensor:
    """patch_feats [n * h * w, D] (image-major: the n images to score), image_ids [n] (their ids
    in row_image's numbering), bank [B, D], row_image [B] -> raw maps [n, S, S] of those images
    against the bank less their own rows; `to_map` turns distances [k, 1, h, w] into maps
    (`Inspector.distance_map`), or into anything else batched along dim 0 (image scores [k] for
    the trim: denoise.leave_one_out_image_scores)."""
    h, w = grid
    per_image = patch_feats.view(len(image_ids), h * w, patch_feats.shape[1])  # [n, h*w, D]
    out = []
    for s in range(0, len(image_ids), batch):
        ids = image_ids[s : s + batch]
        q = per_image[s : s + batch].reshape(-1, patch_feats.shape[1])
        d = leave_one_out_distances(q, ids.repeat_interleave(h * w), bank, row_image, chunk)
        if torch.isinf(d).any():
            raise ValueError("leave-one-out calibration needs bank rows from at least two images; fit on more images")
        out.append(to_map(d.reshape(len(ids), 1, h, w)))
    return torch.cat(out)
