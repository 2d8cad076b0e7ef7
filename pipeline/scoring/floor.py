"""Row floors: a bank row vouches for nothing nearer than its own distance to the k-th other image.

An unlabeled defective training image puts its defect patches into the bank (the greedy
coreset picks the patches farthest from everything else first), and a test defect of the
same kind then finds a near neighbour there and scores low. Normal surface recurs across
hundreds of training images; a defect recurs in few. So each bank row b gets a floor: the
distance from b to its nearest patch in each *other* training image, sorted, the k-th of
them (`scorer.row_floor_images`). A query q is scored min_b max(||q - b||, floor_b): a row
that only a handful of images back cannot bring a score below the distance at which k images
would back it, which is about the score q would get without that row. Rows of common normal
surface have floors below the distances normal patches keep to a coreset bank anyway, so
they score as before. Unlike `min_support` (support.py), nothing is dropped and the floor does
not depend on how finely the coreset cuts the feature space; rare normal surface pays with a
higher score, not with its row. The floors are one buffer [B] in the exported graph (knn.py).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def image_distances(bank: torch.Tensor, feats: torch.Tensor, image_of: torch.Tensor, n_images: int,
                    bank_chunk: int = 4096, patch_chunk: int = 8192) -> torch.Tensor:
    """bank [B, D], feats [M, D] training patches, image_of [M] (long, in [0, n_images)) ->
    squared distance [B, n_images] from each bank row to its nearest patch of each image."""
    out = torch.full((bank.shape[0], n_images), float("inf"))
    f_sq = (feats * feats).sum(dim=1)  # [M]
    counts = torch.bincount(image_of, minlength=n_images)
    if feats.shape[0] and bool((counts == counts[0]).all()) and torch.equal(image_of, torch.arange(n_images).repeat_interleave(counts)):
        # image-major with equal grids (the fit without denoising): whole images per block, a reshape and a min
        per, imgs = int(counts[0]), max(1, patch_chunk // int(counts[0]))
        for b0 in range(0, bank.shape[0], bank_chunk):
            b = bank[b0 : b0 + bank_chunk]  # [Bc, D]
            b_sq = (b * b).sum(dim=1, keepdim=True)  # [Bc, 1]
            for i0 in range(0, n_images, imgs):
                p = slice(i0 * per, min(n_images, i0 + imgs) * per)
                d = torch.addmm(f_sq[p], b, feats[p].T, alpha=-2.0) + b_sq  # [Bc, imgs * per]
                out[b0 : b0 + bank_chunk, i0 : i0 + imgs] = d.view(b.shape[0], -1, per).amin(dim=2).clamp_min(0)
        return out
    for b0 in range(0, bank.shape[0], bank_chunk):
        b = bank[b0 : b0 + bank_chunk]  # [Bc, D]
        b_sq = (b * b).sum(dim=1, keepdim=True)  # [Bc, 1]
        block = out[b0 : b0 + bank_chunk]  # a view: filled in place
        for p0 in range(0, feats.shape[0], patch_chunk):
            d = (b_sq - 2.0 * b @ feats[p0 : p0 + patch_chunk].T + f_sq[p0 : p0 + patch_chunk]).clamp_min(0)  # [Bc, Mc]
            idx = image_of[p0 : p0 + patch_chunk].expand(b.shape[0], -1)
            block.scatter_reduce_(1, idx, d, reduce="amin")
    return out


@torch.no_grad()
def row_floors(bank: torch.Tensor, row_image: torch.Tensor, feats: torch.Tensor, image_of: torch.Tensor, k: int,
               bank_chunk: int = 4096) -> torch.Tensor:
    """bank [B, D] rows selected from feats [M, D]; row_image [B] and image_of [M] (long) their images ->
    floor [B]: each row's distance to its nearest patch in its k-th nearest *other* image (k >= 1)."""
    n_images = int(image_of.max()) + 1
    if not 1 <= k <= n_images - 1:
        raise ValueError(f"scorer.row_floor_images {k}: needs 1 <= k <= the number of other bank images ({n_images - 1}); "
                         f"lower row_floor_images or fit on more images")
    d = image_distances(bank, feats, image_of, n_images, bank_chunk)  # [B, n_images]
    d[torch.arange(bank.shape[0]), row_image] = float("inf")  # a row's own image does not back it
    return d.kthvalue(k, dim=1).values.sqrt()
