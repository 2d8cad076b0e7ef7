"""The learnt patch-feature projection (PCA / whitened PCA): maths against a naive reference, and in the inspector."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.fit import extract_patch_features, fit_inspector, load_inspector, save_inspector
from pipeline.scoring.projection import fit_pca
from tests.test_scoring import _tiny_encoder

pytestmark = pytest.mark.usefixtures("single_thread")


def _data(p: int = 3000, c: int = 12, seed: int = 0) -> torch.Tensor:
    """Correlated features with distinct variances and a non-zero mean: [p, c]."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g) * torch.linspace(3.0, 0.1, c)[:, None]
    return torch.randn(p, c, generator=g) @ mix + 5.0


@pytest.mark.parametrize("dim", [1, 4, 12])
def test_pca_matches_naive_svd(dim: int) -> None:
    x = _data()
    w, b = fit_pca(x, dim, chunk=700)  # chunking must not matter
    xd = x.double().numpy()
    centred = xd - xd.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    ref = vt[:dim]  # [dim, c], principal directions, largest first
    # same directions up to sign; fit_pca's sign rule: largest-magnitude entry positive
    ref = ref * np.sign(ref[np.arange(dim), np.abs(ref).argmax(axis=1)])[:, None]
    np.testing.assert_allclose(w.numpy(), ref, atol=1e-4)
    y = (x @ w.T + b).double()
    np.testing.assert_allclose(y.mean(dim=0).numpy(), 0.0, atol=1e-3)  # centred
    np.testing.assert_allclose(y.var(dim=0).numpy(), sv[:dim] ** 2 / (len(x) - 1), rtol=1e-3)
    assert torch.equal(fit_pca(x, dim)[0], fit_pca(x, dim)[0])  # deterministic


def test_full_pca_preserves_distances_and_whitening_gives_identity_covariance() -> None:
    x = _data(p=2000, c=8)
    w, b = fit_pca(x, 8)
    y = x @ w.T + b
    torch.testing.assert_close(torch.cdist(y[:50], y[50:100]), torch.cdist(x[:50], x[50:100]), rtol=1e-4, atol=1e-3)
    ww, wb = fit_pca(x, 5, whiten=True)
    yw = (x.double() @ ww.double().T + wb.double()).numpy()
    np.testing.assert_allclose(np.cov(yw, rowvar=False), np.eye(5), atol=1e-3)


@pytest.mark.parametrize("dim", [0, 13])
def test_pca_rejects_bad_dim(dim: int) -> None:
    with pytest.raises(ValueError, match="projection dim"):
        fit_pca(_data(), dim)


def test_projection_config_checks() -> None:
    with pytest.raises(ValueError, match="projection must be one of"):
        ScorerConfig(projection="svd", feature_dim=8)
    with pytest.raises(ValueError, match="needs feature_dim"):
        ScorerConfig(projection="pca")


@pytest.mark.parametrize("kind", ["pca", "whiten"])
def test_inspector_with_learnt_projection(kind: str, tmp_path: Path) -> None:
    """The fit learns the projection on the bank images; the bank lives in projected space; save/load keeps it."""
    s = 32
    images = torch.randint(0, 256, (12, 1, s, s), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cfg = ScorerConfig(image_size=s, blur_sigma=0, feature_dim=16, projection=kind, coreset_ratio=1.0, holdout_fraction=0.25)
    res = fit_inspector(_tiny_encoder(), images, cfg, progress=False)
    ins = res.inspector
    c = sum(ins.encoder.tap_channels)
    assert ins.proj_weight.shape == (16, c) and ins.memory_bank.shape[1] == 16
    # the bank is the projected patch features of the bank images (ratio 1: every patch, in some order)
    from pipeline.scoring.fit import split_holdout

    bank_idx, _ = split_holdout(12, cfg.holdout_fraction, torch.Generator().manual_seed(cfg.seed))
    raw = extract_patch_features(ins, images[bank_idx], project=False)
    w, b = fit_pca(raw, 16, whiten=kind == "whiten")
    torch.testing.assert_close(ins.proj_weight, w)
    expected = raw @ w.T + b
    got = ins.memory_bank
    assert got.shape == expected.shape
    torch.testing.assert_close(got[got[:, 0].argsort()], expected[expected[:, 0].argsort()], rtol=1e-4, atol=1e-4)
    # a bank image scores (near) zero distance everywhere: its patches are all in the bank
    with torch.no_grad():
        m = ins.raw_map(images[bank_idx[:1]].float() / 255)
    assert float(m.max()) < 1e-2
    path = save_inspector(ins, tmp_path / "inspector.pt", meta={})
    loaded, _ = load_inspector(path)
    frames = images[:3].permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        for x, y in zip(ins(frames), loaded(frames)):
            assert torch.equal(x, y)
