"""Image support of memory-bank rows: keep unlabeled defects out of the bank.

The greedy k-center coreset picks the patches farthest from everything else first, so the
defect patches of an unlabeled defective training image go into the bank almost surely (on
MTD with ImageNet Lite0 features, 5% defective training images supply 14% of a 2% bank).
A defect is one image's event, while normal surface recurs across images. Every training
patch is assigned to its nearest bank row; a row's *support* is the number of distinct
training images among the patches assigned to it. Rows with support below `min_support`
describe something seen in fewer images than that and are dropped. Rare normal patterns
with little support go too, which is this option's price on clean data (measured in the
README, "Robustness").
"""
from __future__ import annotations

import torch

from pipeline.scoring.knn import nearest_row


@torch.no_grad()
def row_support(feats: torch.Tensor, image_of: torch.Tensor, bank: torch.Tensor, query_chunk: int = 16384,
                bank_chunk: int = 4096) -> torch.Tensor:
    """feats [M, D] training patches, image_of [M] (long, their image ids), bank [B, D] ->
    support [B] (long): distinct images among the patches whose nearest bank row is that row."""
    n_img = int(image_of.max()) + 1 if image_of.numel() else 1
    pairs = []
    for s in range(0, feats.shape[0], query_chunk):
        row = nearest_row(feats[s : s + query_chunk], bank, bank_chunk)
        pairs.append(torch.unique(row * n_img + image_of[s : s + query_chunk]))  # (row, image) pairs
    u = torch.unique(torch.cat(pairs)) if pairs else torch.zeros(0, dtype=torch.long)
    return torch.bincount(u // n_img, minlength=bank.shape[0])
