"""Nearest-neighbour distance by chunked matmul (export-friendly, bounded memory).

||q - b||^2 = ||q||^2 - 2 q.b + ||b||^2 turns the search into GEMMs, which every
runtime (ONNX Runtime, TensorRT) runs fast; chunking the bank bounds the
[queries x bank] distance block, so a 200k-row bank never needs a 200k-wide matrix.
||q||^2 does not change which bank row is nearest, so it is added after the min: the
[queries x chunk] block is one MatMul (the -2 is folded into the [M, D] queries), one
Add of ||b||^2 and the min: one pass over the block fewer than the expanded sum.
(The MatMul stays a separate node: fp16 exports run it in fp16 and the Add in fp32.)
"""
from __future__ import annotations

from collections.abc import Iterator

import torch


def _distance_blocks(q2: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """q2 [M, D] (= -2 * queries), bank [B, D], bank_sq [B] -> (start, ||b||^2 - 2 q.b [M, chunk]) per bank chunk."""
    for s in range(0, bank.shape[0], chunk):
        yield s, q2 @ bank[s : s + chunk].T + bank_sq[s : s + chunk]


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
    """queries [M, D], bank [B, D] (bank_sq [B] = ||bank||^2, optional) -> distance to the nearest bank row [M]."""
    if bank_sq is None:
        bank_sq = (bank * bank).sum(dim=1)
    q_sq = (queries * queries).sum(dim=1, keepdim=True)  # [M, 1]
    best = None
    for _, d in _distance_blocks(queries * -2.0, bank, bank_sq, chunk):
        m = d.min(dim=1).values
        best = m if best is None else torch.minimum(best, m)
    return (best + q_sq.squeeze(1)).clamp_min(0).sqrt()


@torch.no_grad()
def nearest_row(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """queries [M, D], bank [B, D] -> index [M] (long) of each query's nearest bank row (fit time, not exported)."""
    best_d = torch.full((queries.shape[0],), float("inf"))
    best_i = torch.zeros(queries.shape[0], dtype=torch.long)
    for s, d in _distance_blocks(queries * -2.0, bank, (bank * bank).sum(dim=1), chunk):  # ||q||^2 does not change the argmin
        v, i = d.min(dim=1)
        better = v < best_d  # strict: ties keep the earlier row, as a single argmin would
        best_d = torch.where(better, v, best_d)
        best_i = torch.where(better, i + s, best_i)
    return best_i
