"""Contrastive losses vs naive per-anchor references (explicit Python loops)."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.contrastive.losses import (
    DenseInfoNCELoss, InfoNCEQueueLoss, MeanShiftedContrastLoss, NTXentLoss, PerturbationContrastLoss, feature_center,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def _lse(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.logsumexp(torch.stack(values), dim=0)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b) / (a.norm() * b.norm())


def naive_ntxent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Both views as anchors; positive = other view of the same image; 2N-2 negatives."""
    z = torch.cat([z0, z1])
    n2 = z.shape[0]
    n = n2 // 2
    losses = []
    for i in range(n2):
        pos = (i + n) % n2
        logits = [_cos(z[i], z[j]) / t for j in range(n2) if j != i]
        assert len(logits) == 2 * n - 1  # 1 positive + 2N-2 negatives
        losses.append(-_cos(z[i], z[pos]) / t + _lse(logits))
    return torch.stack(losses).mean()


def naive_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    losses = []
    for i in range(q.shape[0]):
        pos = _cos(q[i], k[i]) / t
        logits = [pos] + [_cos(q[i], queue[j]) / t for j in range(queue.shape[0])]
        losses.append(-pos + _lse(logits))
    return torch.stack(losses).mean()


def naive_dense(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, t: float, hard: torch.Tensor | None = None) -> torch.Tensor:
    """Positive: matched location; negatives: every location of every OTHER image, plus (hard
    negatives) the perturbed keys of the anchor's own image; perturbed locations anchor nothing."""
    n, _, h, w = q.shape
    hard = torch.zeros(n, h, w, dtype=torch.bool) if hard is None else hard
    losses = []
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if not valid[i, y, x] or hard[i, y, x]:
                    continue
                a = q[i, :, y, x]
                pos = _cos(a, k[i, :, y, x]) / t
                logits = [pos]
                for j in range(n):
                    for yy in range(h):
                        for xx in range(w):
                            if j != i or hard[j, yy, xx]:
                                logits.append(_cos(a, k[j, :, yy, xx]) / t)
                losses.append(-pos + _lse(logits))
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.2), (4, 8, 0.5), (5, 16, 1.0)])
def test_ntxent_matches_naive(n: int, d: int, t: float) -> None:
    g = torch.Generator().manual_seed(n * 10 + d)
    z0, z1 = torch.randn(n, d, generator=g) * 3, torch.randn(n, d, generator=g)
    got = NTXentLoss(t)(z0, z1)
    torch.testing.assert_close(got, naive_ntxent(z0, z1, t), rtol=1e-5, atol=1e-5)


def test_ntxent_scale_invariant_and_symmetric() -> None:
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    loss = NTXentLoss(0.3)
    torch.testing.assert_close(loss(z0, z1), loss(7.0 * z0, 0.1 * z1))  # cosine similarity
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))  # both views are anchors


@pytest.mark.parametrize("n,t", [(2, 0.2), (4, 0.1), (6, 1.0)])
def test_ntxent_identical_vectors_is_log_2n_minus_1(n: int, t: float) -> None:
    v = torch.tensor([0.3, -1.2, 2.0, 0.5])
    z = v.repeat(n, 1)
    got = NTXentLoss(t)(z, z.clone())
    # every logit equals 1/T -> uniform softmax over 2N-1 candidates
    assert got.item() == pytest.approx(math.log(2 * n - 1), rel=1e-5)


@pytest.mark.parametrize("n,t", [(2, 0.2), (4, 0.5), (3, 1.0)])
def test_ntxent_orthonormal_rows(n: int, t: float) -> None:
    z = torch.eye(2 * n)[:n] * 2.5  # orthogonal rows, any norm
    got = NTXentLoss(t)(z, z.clone())
    # positive logit 1/T, the 2N-2 negatives are orthogonal -> logit 0
    expected = -1 / t + math.log(math.exp(1 / t) + (2 * n - 2))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_ntxent_temperature_scaling() -> None:
    g = torch.Generator().manual_seed(2)
    z0, z1 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    for t in (0.05, 0.2, 2.0):
        torch.testing.assert_close(NTXentLoss(t)(z0, z1), naive_ntxent(z0, z1, t), rtol=1e-5, atol=1e-5)
    # perfect alignment: lower temperature -> sharper -> smaller loss
    z = torch.eye(8)[:4]
    assert NTXentLoss(0.1)(z, z) < NTXentLoss(0.5)(z, z) < NTXentLoss(2.0)(z, z)


def test_ntxent_gradients_flow() -> None:
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(4, 8, generator=g, requires_grad=True)
    z1 = torch.randn(4, 8, generator=g, requires_grad=True)
    NTXentLoss(0.2)(z0, z1).backward()
    for z in (z0, z1):
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # gradient equals the one of the naive reference
    a, b = z0.detach().clone().requires_grad_(), z1.detach().clone().requires_grad_()
    naive_ntxent(a, b, 0.2).backward()
    torch.testing.assert_close(z0.grad, a.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z1.grad, b.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- InfoNCE with queue


@pytest.mark.parametrize("n,k,t", [(1, 1, 0.2), (3, 7, 0.2), (5, 16, 0.07)])
def test_infonce_queue_matches_naive(n: int, k: int, t: float) -> None:
    g = torch.Generator().manual_seed(n + k)
    q, key, queue = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g), torch.randn(k, 8, generator=g) * 5
    got = InfoNCEQueueLoss(t)(q, key, queue)
    torch.testing.assert_close(got, naive_infonce(q, key, queue, t), rtol=1e-5, atol=1e-5)


def test_infonce_queue_exact_values_and_grad() -> None:
    t = 0.5
    q = torch.eye(4)[:2].clone().requires_grad_()
    # positive equal to the query, queue orthogonal to both queries
    queue = torch.eye(4)[2:] * 3
    loss = InfoNCEQueueLoss(t)(q, q.detach().clone(), queue)
    assert loss.item() == pytest.approx(-1 / t + math.log(math.exp(1 / t) + 2), rel=1e-6)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # queue negative identical to the query: positive and negative tie
    same = InfoNCEQueueLoss(t)(q.detach(), q.detach(), q.detach()[:1])
    # anchor 0: 2 logits of 1/T -> log 2; anchor 1: logits [1/T, 0]
    expected = 0.5 * (math.log(2) + (-1 / t + math.log(math.exp(1 / t) + 1)))
    assert same.item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- dense InfoNCE


@pytest.mark.parametrize("n,h,w,t", [(2, 2, 3, 0.2), (3, 3, 3, 0.5)])
def test_dense_infonce_matches_naive(n: int, h: int, w: int, t: float) -> None:
    g = torch.Generator().manual_seed(n * 100 + h * 10 + w)
    q, k = torch.randn(n, 6, h, w, generator=g), torch.randn(n, 6, h, w, generator=g)
    valid = torch.rand(n, h, w, generator=g) < 0.6
    valid[0, 0, 0] = True
    got = DenseInfoNCELoss(t, max_negatives=10**6)(q, k, valid)
    torch.testing.assert_close(got, naive_dense(q, k, valid, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_infonce_hard_negatives_match_naive(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(3, 5, 3, 3, generator=g), torch.randn(3, 5, 3, 3, generator=g)
    valid = torch.rand(3, 3, 3, generator=g) < 0.8
    hard = torch.rand(3, 3, 3, generator=g) < 0.3
    valid[0, 0, 0], hard[0, 0, 0], hard[0, 1, 1] = True, False, True
    got = DenseInfoNCELoss(0.3, max_negatives=10**6)(q, k, valid, hard_negative=hard)
    torch.testing.assert_close(got, naive_dense(q, k, valid, 0.3, hard), rtol=1e-5, atol=1e-5)
    # without perturbations, the hard-negative path is the plain loss
    plain = DenseInfoNCELoss(0.3, max_negatives=10**6)
    torch.testing.assert_close(plain(q, k, valid, hard_negative=torch.zeros_like(hard)), plain(q, k, valid))


def test_dense_infonce_all_valid_and_grad() -> None:
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 2, 2, generator=g, requires_grad=True)
    k = torch.randn(2, 4, 2, 2, generator=g, requires_grad=True)
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    loss = DenseInfoNCELoss(0.3, max_negatives=10**6)(q, k, valid)
    torch.testing.assert_close(loss, naive_dense(q, k, valid, 0.3), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert torch.isfinite(k.grad).all() and k.grad.abs().sum() > 0


def test_dense_infonce_same_image_locations_are_not_negatives() -> None:
    # Image 0 has all-identical location vectors; if its other locations counted as
    # negatives, the loss would be ~log(#locations); it must only see image 1's keys.
    t = 0.5
    q = torch.zeros(2, 4, 2, 2)
    q[0, 0] = 1.0  # image 0: e0 everywhere
    q[1, 1] = 1.0  # image 1: e1 everywhere (orthogonal)
    valid = torch.zeros(2, 2, 2, dtype=torch.bool)
    valid[0] = True
    loss = DenseInfoNCELoss(t, max_negatives=10**6)(q, q.clone(), valid)
    expected = -1 / t + math.log(math.exp(1 / t) + 4)  # 4 orthogonal negatives of image 1
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dense_infonce_nothing_valid_is_zero_with_grad() -> None:
    q = torch.randn(2, 4, 2, 2, requires_grad=True)
    loss = DenseInfoNCELoss(0.2)(q, torch.randn(2, 4, 2, 2), torch.zeros(2, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert q.grad is not None


def test_dense_infonce_subsampling_is_seeded_and_finite() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 8, 4, 4, generator=g), torch.randn(4, 8, 4, 4, generator=g)
    valid = torch.ones(4, 4, 4, dtype=torch.bool)
    loss = DenseInfoNCELoss(0.2, max_negatives=10)
    a = loss(q, k, valid, torch.Generator().manual_seed(5))
    b = loss(q, k, valid, torch.Generator().manual_seed(5))
    assert torch.isfinite(a) and a.item() == b.item()


# --------------------------------------------------------------------------- perturbation contrast (spotdiff)


def naive_spot(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, pert: torch.Tensor, t: float) -> torch.Tensor:
    """Anchors: valid clean locations of any image; positive: their own key; negatives: every
    valid perturbed key of ANY image (own or other); clean keys are never negatives."""
    n, _, h, w = q.shape
    negs = [k[j, :, y, x] for j in range(n) for y in range(h) for x in range(w) if valid[j, y, x] and pert[j, y, x]]
    losses = []
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if not valid[i, y, x] or pert[i, y, x]:
                    continue
                a = q[i, :, y, x]
                pos = _cos(a, k[i, :, y, x]) / t
                losses.append(-pos + _lse([pos] + [_cos(a, kk) / t for kk in negs]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("n,h,w,t,seed", [(2, 2, 3, 0.2, 0), (3, 3, 3, 0.5, 1), (4, 2, 2, 0.07, 2)])
def test_perturbation_contrast_matches_naive(n: int, h: int, w: int, t: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(n, 6, h, w, generator=g), torch.randn(n, 6, h, w, generator=g) * 2
    valid = torch.rand(n, h, w, generator=g) < 0.7
    pert = torch.rand(n, h, w, generator=g) < 0.35
    valid[0, 0, 0], pert[0, 0, 0] = True, False  # at least one anchor
    valid[-1, -1, -1], pert[-1, -1, -1] = True, True  # and one negative (in another image)
    pert[0, 0, 1] = True
    valid[0, 0, 1] = False  # perturbed but unmatched: no negative
    qa, ka = q.clone().requires_grad_(), k.clone().requires_grad_()
    got = PerturbationContrastLoss(t)(qa, ka, valid, pert)
    qb, kb = q.clone().requires_grad_(), k.clone().requires_grad_()
    ref = naive_spot(qb, kb, valid, pert, t)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got.backward()
    ref.backward()
    torch.testing.assert_close(qa.grad, qb.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ka.grad, kb.grad, rtol=1e-4, atol=1e-6)


def test_perturbation_contrast_negatives_from_other_images_and_clean_keys_ignored() -> None:
    # Image 0 is clean everywhere (all anchors, key == query); image 1 has a single perturbed key,
    # orthogonal to the anchors. Clean keys (even identical ones) are no negatives, so each anchor
    # sees exactly [pos = 1/T, one negative = 0].
    t = 0.5
    q = torch.zeros(2, 4, 2, 2)
    q[:, 0] = 1.0  # every location e0
    k = q.clone()
    k[1, :, 1, 1] = torch.tensor([0.0, 3.0, 0.0, 0.0])  # e1, perturbed
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    pert = torch.zeros(2, 2, 2, dtype=torch.bool)
    pert[1, 1, 1] = True
    loss = PerturbationContrastLoss(t)(q, k, valid, pert)
    assert loss.item() == pytest.approx(-1 / t + math.log(math.exp(1 / t) + 1), rel=1e-6)
    # the perturbed key equal to the anchors: positive and negative tie -> log 2
    k[1, :, 1, 1] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    assert PerturbationContrastLoss(t)(q, k, valid, pert).item() == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("case", ["no_negatives", "no_anchors", "nothing_valid", "perturbed_but_invalid"])
def test_perturbation_contrast_zero_with_grad(case: str) -> None:
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 2, 2, generator=g, requires_grad=True)
    k = torch.randn(2, 4, 2, 2, generator=g)
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    pert = torch.zeros(2, 2, 2, dtype=torch.bool)
    if case == "no_anchors":
        pert[:] = True
    elif case == "nothing_valid":
        valid[:], pert[0, 0, 0] = False, True
    elif case == "perturbed_but_invalid":
        pert[1, 1, 1], valid[1, 1, 1] = True, False
    loss = PerturbationContrastLoss(0.2)(q, k, valid, pert)
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert q.grad is not None and torch.equal(q.grad, torch.zeros_like(q))


def test_perturbation_contrast_temperature_scaling() -> None:
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(3, 5, 2, 2, generator=g), torch.randn(3, 5, 2, 2, generator=g)
    valid = torch.ones(3, 2, 2, dtype=torch.bool)
    pert = torch.rand(3, 2, 2, generator=g) < 0.4
    pert[0, 0, 0], pert[2, 1, 1] = False, True
    for t in (0.05, 0.2, 2.0):
        torch.testing.assert_close(PerturbationContrastLoss(t)(q, k, valid, pert), naive_spot(q, k, valid, pert, t),
                                   rtol=1e-5, atol=1e-5)
    # anchors == keys, P orthogonal perturbed keys: loss = log(1 + P exp(-1/T)), sharper with lower T
    q = torch.zeros(1, 4, 1, 3)
    q[0, 0] = 1.0
    k = q.clone()
    k[0, 1, 0, 1:] = 1.0
    k[0, 0, 0, 1:] = 0.0
    pert = torch.tensor([[[False, True, True]]])
    valid = torch.ones(1, 1, 3, dtype=torch.bool)
    vals = []
    for t in (0.1, 0.5, 2.0):
        got = PerturbationContrastLoss(t)(q, k, valid, pert).item()
        assert got == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)), rel=1e-5, abs=1e-7)  # float32 log-softmax
        vals.append(got)
    assert vals[0] < vals[1] < vals[2]
    assert PerturbationContrastLoss().temperature == 0.2


# --------------------------------------------------------------------------- mean-shifted contrast (msc)


def naive_msc(z0: torch.Tensor, z1: torch.Tensor, c: torch.Tensor, t: float, w: float) -> torch.Tensor:
    """Each feature made unit, shifted by c, then NT-Xent (which renormalises); plus w times the
    mean squared distance of the unit features to c, over both views, one image at a time."""
    s0 = torch.stack([z0[i] / z0[i].norm() - c for i in range(z0.shape[0])])
    s1 = torch.stack([z1[i] / z1[i].norm() - c for i in range(z1.shape[0])])
    angular = sum(float((s[i] ** 2).sum()) for s in (s0, s1) for i in range(s.shape[0])) / (2 * z0.shape[0])
    return naive_ntxent(s0, s1, t) + w * angular


@pytest.mark.parametrize("n,d,t,w", [(2, 3, 0.25, 0.0), (5, 8, 0.25, 1.0), (7, 4, 0.1, 0.5)])
def test_mean_shifted_matches_naive(n: int, d: int, t: float, w: float) -> None:
    g = torch.Generator().manual_seed(n * 10 + d)
    z0, z1 = torch.randn(n, d, generator=g) + 2.0, torch.randn(n, d, generator=g) + 2.0  # one cone, as good parts are
    c = feature_center(torch.cat([z0, z1]))
    torch.testing.assert_close(MeanShiftedContrastLoss(t, w)(z0, z1, c), naive_msc(z0, z1, c, t, w).float())


def test_mean_shifted_with_zero_center_is_ntxent_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss = MeanShiftedContrastLoss(0.25)
    torch.testing.assert_close(loss(z0, z1, torch.zeros(5)), NTXentLoss(0.25)(z0, z1))
    c = feature_center(z0)
    scales = torch.rand(6, 1, generator=g) * 10 + 0.1  # only each feature's direction counts
    torch.testing.assert_close(loss(z0 * scales, z1, c), loss(z0, z1, c))


def test_mean_shifted_separates_a_tight_cone_that_plain_ntxent_sees_as_one_point() -> None:
    """Good images' features share one narrow cone: around the origin all pairs look alike (loss near
    log(2N-1)); around the cone's centre the two views of an image are told apart from the others."""
    g = torch.Generator().manual_seed(0)
    n, d = 8, 16
    base = torch.zeros(d)
    base[0] = 1.0
    jitter = 0.02 * torch.randn(n, d, generator=g)
    z0 = base + jitter
    z1 = base + jitter + 0.002 * torch.randn(n, d, generator=g)  # the other view: nearly the same direction
    plain = NTXentLoss(0.25)(z0, z1)
    shifted = MeanShiftedContrastLoss(0.25)(z0, z1, feature_center(torch.cat([z0, z1])))
    assert abs(float(plain) - math.log(2 * n - 1)) < 0.1
    assert float(shifted) < 0.5 * float(plain)


def test_mean_shifted_gradients_and_angular_pull() -> None:
    g = torch.Generator().manual_seed(1)
    z0 = (torch.randn(4, 6, generator=g) + 1.0).requires_grad_()
    z1 = torch.randn(4, 6, generator=g) + 1.0
    c = feature_center(torch.cat([z0.detach(), z1]))
    MeanShiftedContrastLoss(0.25, angular_weight=1.0)(z0, z1, c).backward()
    assert z0.grad is not None and torch.isfinite(z0.grad).all() and z0.grad.abs().sum() > 0
    # the angular term alone moves features towards c: a small step along -grad raises their cosine to c
    z = (torch.randn(4, 6, generator=g) + 1.0).requires_grad_()
    far = MeanShiftedContrastLoss(0.25, angular_weight=1.0)(z, z.detach(), c) - MeanShiftedContrastLoss(0.25)(z, z.detach(), c)
    far.backward()
    cos_before = torch.nn.functional.cosine_similarity(z.detach(), c[None]).mean()
    cos_after = torch.nn.functional.cosine_similarity(z.detach() - 0.1 * z.grad, c[None]).mean()
    assert cos_after > cos_before


def test_feature_center_is_the_unit_mean_of_unit_features() -> None:
    f = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    torch.testing.assert_close(feature_center(f), torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert abs(float(feature_center(torch.randn(9, 4)).norm()) - 1.0) < 1e-6
