"""Greedy k-center coreset selection (PatchCore), a seeded pure function.

Greedy k-center picks, one at a time, the point farthest from everything picked
so far, so the memory bank covers the feature space (rare good patterns
included) with a small fraction of the patches. Two speed-ups, both measured in
benchmarks/: distances are computed on a random projection (Johnson-Lindenstrauss
keeps them roughly), and large sets are split into random chunks that are
reduced independently, which keeps each chunk's working set in cache.
"""
from __future__ import annotations

import math

import torch


def _greedy(x: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """x: [M, d] -> indices [k] into x, starting at `start`; unique."""
    m = x.shape[0]
    sq = (x * x).sum(dim=1)  # [M]
    sel = torch.empty(k, dtype=torch.long)
    sel[0] = start
    min_d = sq - 2 * (x @ x[start]) + sq[start]  # squared distance to the selection, [M]
    min_d[start] = -1.0
    for i in range(1, k):
        idx = int(torch.argmax(min_d))
        if min_d[idx] <= 0:  # only duplicates left: take the first unselected ones in order
            rest = torch.ones(m, dtype=torch.bool)
            rest[sel[:i]] = False
            sel[i:] = torch.nonzero(rest).flatten()[: k - i]
            break
        sel[i] = idx
        min_d = torch.minimum(min_d, sq - 2 * (x @ x[idx]) + sq[idx])
        min_d[idx] = -1.0  # never pick twice, even with rounding
    return sel


def coreset_size(n: int, ratio: float, max_rows: int) -> int:
    """Rows a bank keeps of n patches: `ratio` of them (at least 1), at most `max_rows` and n."""
    return min(max_rows, n, max(1, math.ceil(ratio * n)))


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    *,
    generator: torch.Generator,
    proj_dim: int | None = 64,
    chunk_size: int | None = None,
    refine: float = 1.0,
) -> torch.Tensor:
    """Indices [n_select] (long, unique) of a k-center coreset of `features` [N, D].

    The first index is drawn from `generator` (the seed point). With `chunk_size`
    < N, points are shuffled into ceil(N / chunk_size) chunks, each reduced to
    its share of `n_select`; chunk_size=None is one global pass. With `refine` > 1
    the chunks keep `refine * n_select` points between them and one global pass
    picks the final `n_select` from those: chunks alone each spend budget on the
    same kind of outlier, the global pass removes that redundancy cheaply.
    """
    n = features.shape[0]
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select must be in [1, {n}], got {n_select}")
    x = features.float()
    if proj_dim is not None and proj_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], proj_dim, generator=generator) / math.sqrt(proj_dim)
        x = x @ proj
    if chunk_size is None or chunk_size >= n:
        start = int(torch.randint(n, (1,), generator=generator))
        return _greedy(x, n_select, start)
    if refine > 1:
        pool = min(n, math.ceil(refine * n_select))
        first = greedy_coreset(x, pool, generator=generator, proj_dim=None, chunk_size=chunk_size)
        return first[greedy_coreset(x[first], n_select, generator=generator, proj_dim=None)]
    n_chunks = math.ceil(n / chunk_size)
    perm = torch.randperm(n, generator=generator)
    chunks = perm.chunk(n_chunks)
    # split n_select over chunks in proportion to their size (largest remainder)
    shares = [n_select * len(c) / n for c in chunks]
    counts = [int(s) for s in shares]
    for i in sorted(range(n_chunks), key=lambda i: counts[i] - shares[i])[: n_select - sum(counts)]:
        counts[i] += 1
    picked = []
    for idx, k in zip(chunks, counts):
        if k == 0:
            continue
        start = int(torch.randint(len(idx), (1,), generator=generator))
        picked.append(idx[_greedy(x[idx], k, start)])
    return torch.cat(picked)
