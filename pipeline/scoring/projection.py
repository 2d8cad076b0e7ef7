"""Learnt linear projection of patch features: PCA, optionally whitened.

The search costs bank rows x feature dims per query, so fewer dims are the cheapest
speed-up. Averaging adjacent channels (PatchCore's reduction, `projection: group`)
throws away whatever the averaged pairs disagree on; the top principal directions of
the good patches keep the most variance for the same dims, and whitening them gives
each kept direction equal weight in the distance (a Mahalanobis distance restricted to
the top components), so a few high-variance channels cannot drown the rest.
Fitted on the bank images' patches; applied inside the graph as one 1x1 conv.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def fit_pca(feats: torch.Tensor, dim: int, whiten: bool = False, chunk: int = 65536, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """feats [P, C] -> (weight [dim, C], bias [dim]) with y = weight @ x + bias.

    Rows of `weight` are the top-`dim` principal directions (eigenvectors of the
    covariance, largest first, sign fixed so each row's largest entry is positive);
    y is centred on the training mean. `whiten` scales row i by 1/sqrt(var_i + eps * var_0).
    Deterministic: no randomness; accumulates in float64, chunk by chunk (bounded memory).
    """
    p, c = feats.shape
    if not 0 < dim <= c:
        raise ValueError(f"projection dim must be in 1..{c} (the patch feature channels), got {dim}")
    if p < 2:
        raise ValueError(f"PCA needs at least 2 patch features, got {p}")
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, c, dtype=torch.float64)
    for i in range(0, p, chunk):
        x = feats[i : i + chunk].double()
        s += x.sum(dim=0)
        ss += x.T @ x
    mean = s / p
    cov = (ss - p * torch.outer(mean, mean)) / (p - 1)  # [C, C]
    var, vec = torch.linalg.eigh(cov)  # ascending
    var, vec = var.flip(0)[:dim].clamp_min(0), vec.flip(1)[:, :dim]  # [dim], [C, dim]
    sign = torch.sign(vec.gather(0, vec.abs().argmax(dim=0, keepdim=True)))  # [1, dim]
    vec = vec * sign
    if whiten:
        vec = vec / torch.sqrt(var + eps * var[0])
    weight = vec.T.contiguous()  # [dim, C]
    bias = -(weight @ mean)
    return weight.float(), bias.float()
