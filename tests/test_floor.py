"""Row floors (pipeline/scoring/floor.py) and the floored search (knn.py, leave_one_out.py): against
naive references, their invariants, the fit on a contaminated synthetic set, and ONNX parity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.fit import fit_inspector, raw_maps
from pipeline.scoring.floor import image_distances, row_floors
from pipeline.scoring.knn import nearest_distance
from pipeline.scoring.leave_one_out import leave_one_out_distances

pytestmark = pytest.mark.usefixtures("single_thread")


def naive_floors(bank: torch.Tensor, row_image: torch.Tensor, feats: torch.Tensor, image_of: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: for every other image the distance to its nearest patch, sorted; the k-th."""
    b, x = bank.double(), feats.double()
    out = []
    for j in range(len(b)):
        per_image: dict[int, float] = {}
        for i in range(len(x)):
            img = int(image_of[i])
            if img == int(row_image[j]):
                continue
            per_image[img] = min(per_image.get(img, float("inf")), float((b[j] - x[i]).norm()))
        out.append(sorted(per_image.values())[k - 1])
    return torch.tensor(out, dtype=torch.float64)


def naive_floored_distance(q: torch.Tensor, bank: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """min over rows of max(||q - b||, floor_b)."""
    d = torch.cdist(q.double(), bank.double())  # [M, B]
    return torch.maximum(d, floor.double()[None, :]).min(dim=1).values


@pytest.mark.parametrize("m,b,d,n_img,k,chunk,seed", [(60, 7, 3, 6, 1, 2, 0), (90, 12, 4, 9, 3, 5, 1), (30, 30, 2, 4, 3, 100, 2)])
def test_row_floors_match_naive(m: int, b: int, d: int, n_img: int, k: int, chunk: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(m, d, generator=g, dtype=torch.float64).float()
    image_of = torch.randint(0, n_img, (m,), generator=g)
    image_of[:n_img] = torch.arange(n_img)  # every image has a patch
    sel = torch.randperm(m, generator=g)[:b]
    got = row_floors(feats[sel], image_of[sel], feats, image_of, k, bank_chunk=chunk)
    want = naive_floors(feats[sel], image_of[sel], feats, image_of, k)
    assert torch.allclose(got.double(), want, atol=1e-4), (got, want)


def test_image_distances_blocks_agree() -> None:
    """The bank and patch chunking changes nothing; a row's own image is at distance 0 (it is one of its patches)."""
    g = torch.Generator().manual_seed(3)
    feats, image_of = torch.randn(50, 5, generator=g), torch.arange(50) // 10
    bank = feats[[0, 13, 27, 49]]
    full = image_distances(bank, feats, image_of, 5, bank_chunk=4096, patch_chunk=4096)
    for bc, pc in ((1, 7), (3, 1), (2, 50)):
        assert torch.allclose(image_distances(bank, feats, image_of, 5, bank_chunk=bc, patch_chunk=pc), full, atol=1e-5)
    assert torch.allclose(full[torch.arange(4), torch.tensor([0, 1, 2, 4])], torch.zeros(4), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 23, 64])
def test_floored_search_matches_naive(chunk: int) -> None:
    g = torch.Generator().manual_seed(4)
    q, bank = torch.randn(50, 6, generator=g), torch.randn(23, 6, generator=g)
    floor = torch.rand(23, generator=g) * 4.0
    got = nearest_distance(q, bank, chunk=chunk, floor_sq=floor * floor)
    assert torch.allclose(got.double(), naive_floored_distance(q, bank, floor), atol=1e-4)


def test_floor_invariants() -> None:
    """Zero floors leave the search as it was; floors never lower a distance; one huge floor only removes its row;
    raising k never lowers a floor."""
    g = torch.Generator().manual_seed(5)
    q, bank = torch.randn(40, 4, generator=g), torch.randn(15, 4, generator=g)
    plain = nearest_distance(q, bank, chunk=4)
    assert torch.allclose(nearest_distance(q, bank, chunk=4, floor_sq=torch.zeros(15)), plain, atol=1e-5)
    floor = torch.rand(15, generator=g)
    assert (nearest_distance(q, bank, chunk=4, floor_sq=floor * floor) >= plain - 1e-5).all()
    huge = torch.zeros(15)
    huge[3] = 1e12
    assert torch.allclose(nearest_distance(q, bank, chunk=4, floor_sq=huge),
                          nearest_distance(q, bank[torch.arange(15) != 3], chunk=4), atol=1e-5)
    feats, image_of = torch.randn(80, 4, generator=g), torch.arange(80) // 8
    f = [row_floors(feats[::5], image_of[::5], feats, image_of, k) for k in range(1, 10)]
    assert all((a <= b + 1e-6).all() for a, b in zip(f, f[1:]))


def test_floored_leave_one_out_matches_naive() -> None:
    g = torch.Generator().manual_seed(6)
    bank, row_image = torch.randn(20, 3, generator=g), torch.arange(20) % 5
    q, q_image = torch.randn(30, 3, generator=g), torch.arange(30) % 3
    floor = torch.rand(20, generator=g)
    got = leave_one_out_distances(q, q_image, bank, row_image, chunk=6, floor_sq=floor * floor)
    d = torch.maximum(torch.cdist(q.double(), bank.double()), floor.double()[None])
    d = d.masked_fill(q_image[:, None] == row_image[None, :], float("inf"))
    assert torch.allclose(got.double(), d.min(dim=1).values, atol=1e-4)


def test_floors_refuse_k_beyond_the_images() -> None:
    feats, image_of = torch.randn(12, 2), torch.arange(12) // 4  # 3 images
    with pytest.raises(ValueError, match="row_floor_images 3"):
        row_floors(feats[:2], image_of[:2], feats, image_of, 3)
    with pytest.raises(ValueError, match="row_floor_images"):
        ScorerConfig(row_floor_images=-1)


def test_fit_floors_the_contaminating_defects(spotted_training_set) -> None:  # noqa: ANN001
    """Two of 24 'good' training images carry spots. With floors (k = 3 other images) spotted test images
    score no lower and higher on average (raw), the bank is the same rows, and the spotted images' rows get the highest floors."""
    enc, images, frames = spotted_training_set
    s = images.shape[-1]
    res, raw = {}, {}
    for k in (0, 3):
        cfg = ScorerConfig(image_size=s, blur_sigma=2, coreset_ratio=0.1, row_floor_images=k, calibration="leave_one_out")
        res[k] = fit_inspector(enc, images, cfg, progress=False)
        raw[k] = res[k].inspector.reduce(raw_maps(res[k].inspector, frames))
    assert torch.equal(res[0].inspector.memory_bank, res[3].inspector.memory_bank)
    assert not res[0].inspector.has_floor and "bank_floor_sq" not in res[0].inspector.state_dict()
    floor = res[3].inspector.bank_floor_sq.sqrt()
    spotted = torch.isin(res[3].row_image, torch.tensor([4, 17]))
    assert spotted.any(), "fixture: a spotted image should reach the bank"
    assert floor[spotted].max() > floor[~spotted].quantile(0.99)
    assert (raw[3] >= raw[0]).all() and raw[3].mean() > raw[0].mean()
    assert res[3].threshold_raw >= res[0].threshold_raw


def test_floored_inspector_exports_with_parity(tiny_data: Path, tmp_path: Path) -> None:
    """Floors travel in inspector.pt and the ONNX graph (one Max more per bank chunk); torch and ONNX Runtime agree."""
    import onnx

    from inference.export import export_bundle
    from inference.runtime import BundleInspector
    from pipeline.config import load_config
    from pipeline.data.tensors import load_images
    from pipeline.scoring.fit import load_inspector
    from pipeline.steps import fit_step, pretrain_step, read_samples

    run = tmp_path / "run"
    cfg = load_config("smoke", {"scorer.row_floor_images": 2})
    pretrain_step(tiny_data / "split.json", run, cfg, epochs=0, progress=False)
    fit_step(run, tiny_data / "split.json", progress=False)
    insp, _ = load_inspector(run / "inspector.pt")
    assert insp.has_floor and float(insp.bank_floor_sq.max()) > 0
    b = tmp_path / "bundle"
    export_bundle(run, b, precisions=("fp16",), max_batch=8)
    assert "Max" in {n.op_type for n in onnx.load(str(b / "model.onnx")).graph.node}  # the floor (the graph had none)
    samples, _ = read_samples(tiny_data / "split.json", "test", False, 1)
    frames = load_images(samples, insp.cfg.image_size, 1).permute(0, 2, 3, 1).contiguous().numpy()
    ref = BundleInspector.load(b, runtime="torch").run(frames)
    got = BundleInspector.load(b, runtime="ort-cpu").run(frames)
    assert np.array_equal(ref.is_defect, got.is_defect)
    assert np.allclose(ref.score, got.score, rtol=1e-4, atol=1e-5)
    assert np.abs(ref.anomaly_map - got.anomaly_map).max() <= 1e-3


def test_image_distances_fast_path_matches_scatter() -> None:
    """Image-major equal grids (the reshape path) and the same patches shuffled (the scatter path) agree."""
    g = torch.Generator().manual_seed(7)
    feats, image_of = torch.randn(60, 4, generator=g), torch.arange(60) // 12  # 5 images of 12 patches
    bank = torch.randn(9, 4, generator=g)
    perm = torch.randperm(60, generator=g)
    fast = image_distances(bank, feats, image_of, 5, bank_chunk=4, patch_chunk=25)
    slow = image_distances(bank, feats[perm], image_of[perm], 5, bank_chunk=4, patch_chunk=25)
    assert torch.allclose(fast, slow, atol=1e-5)
    naive = torch.stack([torch.cdist(bank, feats[image_of == i]).square().min(dim=1).values for i in range(5)], dim=1)
    assert torch.allclose(fast, naive, atol=1e-4)
