"""Image support of bank rows (pipeline/scoring/support.py): against a naive reference, and on a
contaminated synthetic training set, where min_support keeps the planted defects out of the bank."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.fit import fit_inspector, raw_maps
from pipeline.scoring.knn import nearest_row
from pipeline.scoring.support import row_support

pytestmark = pytest.mark.usefixtures("single_thread")


def naive_support(feats: torch.Tensor, image_of: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per bank row, the set of images whose patches have it as (first) nearest row, counted."""
    x, b = feats.double(), bank.double()
    images: list[set[int]] = [set() for _ in range(len(bank))]
    for i in range(len(x)):
        d = [float((x[i] - b[j]).norm()) for j in range(len(b))]
        images[d.index(min(d))].add(int(image_of[i]))
    return torch.tensor([len(s) for s in images])


@pytest.mark.parametrize("m,b,d,chunk,seed", [(40, 5, 3, 2, 0), (90, 12, 4, 5, 1), (7, 7, 2, 100, 2)])
def test_row_support_matches_naive(m: int, b: int, d: int, chunk: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(m, d, generator=g, dtype=torch.float64).float()
    image_of = torch.randint(0, 6, (m,), generator=g)
    bank = feats[torch.randperm(m, generator=g)[:b]]
    got = row_support(feats, image_of, bank, query_chunk=chunk + 3, bank_chunk=chunk)
    assert torch.equal(got, naive_support(feats, image_of, bank))


def test_nearest_row_matches_argmin_across_chunks() -> None:
    g = torch.Generator().manual_seed(4)
    q, bank = torch.randn(50, 6, generator=g), torch.randn(23, 6, generator=g)
    want = torch.cdist(q.double(), bank.double()).argmin(dim=1)
    for chunk in (1, 4, 23, 64):
        assert torch.equal(nearest_row(q, bank, chunk), want)


def test_support_invariants() -> None:
    """Support never exceeds the images present, and rows of a bank that is all patches of one image
    get support 1 (each patch is its own nearest row)."""
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(60, 4, generator=g)
    image_of = torch.arange(60) // 10  # 6 images of 10 patches
    sup = row_support(feats, image_of, feats[:10])
    assert int(sup.max()) <= 6 and int(sup.sum()) >= 6  # every image lands somewhere
    assert torch.equal(row_support(feats[:10], image_of[:10], feats[:10]), torch.ones(10, dtype=torch.long))


def test_config_rejects_bad_min_support() -> None:
    with pytest.raises(ValueError, match="min_support"):
        ScorerConfig(min_support=0)


def test_fit_keeps_contaminating_defects_out_of_the_bank(spotted_training_set) -> None:  # noqa: ANN001
    """Two of 24 'good' training images carry spots; with min_support 2 test images with spots score
    (raw distance) higher, the fit reports the dropped rows, and the bank shrinks by exactly them."""
    enc, images, frames = spotted_training_set
    s = images.shape[-1]
    raw, res = {}, {}
    for m in (1, 2):
        res[m] = fit_inspector(enc, images, ScorerConfig(image_size=s, blur_sigma=2, coreset_ratio=0.1, min_support=m),
                               progress=False)
        raw[m] = res[m].inspector.reduce(raw_maps(res[m].inspector, frames))
    assert res[1].n_unsupported == 0
    assert res[2].n_unsupported > 0 and res[2].bank_size == res[1].bank_size - res[2].n_unsupported
    assert res[2].inspector.memory_bank.shape[0] == res[2].bank_size
    assert raw[2].mean() > raw[1].mean()


def test_fit_refuses_a_support_nobody_reaches() -> None:
    from models.encoder import Encoder, EncoderConfig

    enc = Encoder(EncoderConfig(arch="resnet18", in_channels=1, taps=("layer1",), mean=(0.5,), std=(0.25,)))
    images = torch.randint(0, 255, (4, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="min_support 50"):
        fit_inspector(enc, images, ScorerConfig(image_size=32, min_support=50), progress=False)


def test_int8_refit_refuses_a_bank_it_cannot_repeat(tmp_path) -> None:  # noqa: ANN001
    """The INT8 re-fit swaps bank chunks of fixed size; a support-filtered bank cannot be repeated, so it
    says so (export then keeps the fp32 bank with a warning) instead of building another bank."""
    from inference.export import ExportError, refit_int8
    from models.encoder import Encoder, EncoderConfig
    from pipeline.scoring.inspector import Inspector

    enc = Encoder(EncoderConfig(arch="resnet18", in_channels=1, taps=("layer1",), mean=(0.5,), std=(0.25,)))
    insp = Inspector(enc, ScorerConfig(image_size=32, min_support=2), bank_size=4)
    with pytest.raises(ExportError, match="min_support 2"):
        refit_int8(tmp_path / "model.int8.onnx", insp, np.zeros((4, 32, 32, 1), dtype=np.uint8))
