"""Contrastive pretraining: smoke runs per method, determinism, resume after a kill, freeze_bn."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.encoder import Encoder, EncoderConfig
from pipeline.contrastive.augment import PhotometricConfig
from pipeline.contrastive.perturb import PerturbConfig
from pipeline.contrastive.pretrain import (
    ENCODER_FILE,
    STATE_FILE,
    ContrastiveModel,
    PretrainConfig,
    _enqueue,
    _loss,
    _lr_at,
    load_encoder,
    pretrain,
    resolve_precision,
)
from pipeline.contrastive.views import ViewConfig
from pipeline.data.synthetic import make_surface


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """8 good surfaces, uint8 [8, 1, 64, 64]."""
    return torch.from_numpy(np.stack([make_surface(np.random.default_rng([5, i]), "brushed_metal", (64, 64)) for i in range(8)]))[:, None]


METHODS = ("simclr", "moco", "densecl", "msc")


def _cfg(method: str, epochs: int = 1, **kw) -> PretrainConfig:
    base = dict(method=method, epochs=epochs, batch_size=4, lr=1e-3, warmup_epochs=0.5, proj_hidden=32, proj_dim=16,
                queue_size=16, seed=0, views=ViewConfig(crop_size=32), photometric=PhotometricConfig(blur_prob=0.5))
    base.update(kw)
    return PretrainConfig(**base)


def _encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(EncoderConfig(taps=("layer2",)))  # stride 8: a 4 x 4 dense map on 32 px crops


def _clone_state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_writes_checkpoints(method: str, images: torch.Tensor, tmp_path: Path) -> None:
    enc = _encoder()
    before = _clone_state(enc)
    res = pretrain(images, enc, _cfg(method, epochs=2), tmp_path, progress=False, meta={"tag": "t"})
    assert res.epochs_run == 2 and len(res.losses) == 2
    assert all(math.isfinite(x) and x > 0 for x in res.losses)
    assert res.encoder_path == tmp_path / ENCODER_FILE and res.encoder_path.is_file()
    assert (tmp_path / STATE_FILE).is_file()
    assert not enc.training  # handed back in eval mode
    assert any(not torch.equal(before[k], v) for k, v in enc.state_dict().items() if k.endswith("weight"))
    # encoder.pt: the trained encoder alone, loadable without the training code's objects
    loaded, ckpt = load_encoder(res.encoder_path)
    _assert_same(loaded.state_dict(), enc.state_dict())
    assert loaded.cfg == enc.cfg and ckpt["epochs"] == 2 and ckpt["tag"] == "t" and ckpt["pretrain"]["method"] == method
    state = torch.load(tmp_path / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["losses"] == res.losses and state["seen"] == 2 * 8
    assert ("key_model" in state) == (method == "moco")
    if method == "moco":  # queue rows are unit keys
        torch.testing.assert_close(state["queue"].norm(dim=1), torch.ones(16))
        assert state["queue_ptr"] == (2 * 8) % 16
    has_dense = any(k.startswith("dense_head.") for k in state["model"])
    assert has_dense == (method == "densecl")
    has_head = any(k.startswith("head.") for k in state["model"])
    assert has_head == (method != "msc")  # msc contrasts the backbone's pooled features themselves
    assert ("center" in state) == (method == "msc")
    if method == "msc":
        assert state["center"].shape == (enc.tap_channels[-1],) and abs(float(state["center"].norm()) - 1) < 1e-5


@pytest.mark.parametrize("method", ["densecl", "moco"])
def test_deterministic_under_seed(method: str, images: torch.Tensor, tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        enc = _encoder()
        res = pretrain(images, enc, _cfg(method), tmp_path / str(i), progress=False)
        runs.append((_clone_state(enc), res.losses))
    _assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    enc = _encoder()
    pretrain(images, enc, _cfg(method, seed=1), tmp_path / "other", progress=False)
    assert any(not torch.equal(runs[0][0][k], v) for k, v in enc.state_dict().items())


class _Killed(Exception):
    pass


def _kill_after(epoch: int):
    def cb(e: int, loss: float) -> None:
        assert math.isfinite(loss)
        if e == epoch:
            raise _Killed
    return cb


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_kill_equals_uninterrupted(method: str, images: torch.Tensor, tmp_path: Path) -> None:
    cfg = _cfg(method, epochs=2)
    straight = _encoder()
    ref = pretrain(images, straight, cfg, tmp_path / "straight", progress=False)

    killed = _encoder()
    with pytest.raises(_Killed):
        pretrain(images, killed, cfg, tmp_path / "resumed", progress=False, on_epoch=_kill_after(1))
    assert torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)["epoch"] == 1
    assert load_encoder(tmp_path / "resumed" / ENCODER_FILE)[1]["epochs"] == 1

    fresh = _encoder(seed=123)  # whatever it starts with, the state file wins
    res = pretrain(images, fresh, cfg, tmp_path / "resumed", resume=True, progress=False)
    assert res.epochs_run == 1
    assert res.losses == ref.losses
    _assert_same(fresh.state_dict(), straight.state_dict())
    a = torch.load(tmp_path / "straight" / STATE_FILE, weights_only=True)
    b = torch.load(tmp_path / "resumed" / STATE_FILE, weights_only=True)
    _assert_same(a["model"], b["model"])
    assert torch.equal(a["generator"], b["generator"])
    if method == "moco":
        _assert_same(a["key_model"], b["key_model"])
        assert torch.equal(a["queue"], b["queue"]) and a["queue_ptr"] == b["queue_ptr"]
    if method == "msc":  # the centre comes from the initial weights and survives the kill
        assert torch.equal(a["center"], b["center"])


def test_resume_rejects_other_config_and_finished_run_is_noop(images: torch.Tensor, tmp_path: Path) -> None:
    enc = _encoder()
    pretrain(images, enc, _cfg("simclr"), tmp_path, progress=False)
    done = _clone_state(enc)
    with pytest.raises(ValueError, match="another pretraining config"):
        pretrain(images, _encoder(), _cfg("simclr", epochs=2), tmp_path, resume=True, progress=False)
    again = _encoder(seed=5)
    res = pretrain(images, again, _cfg("simclr"), tmp_path, resume=True, progress=False)
    assert res.epochs_run == 0 and len(res.losses) == 1
    _assert_same(again.state_dict(), done)


def test_resume_without_state_starts_fresh(images: torch.Tensor, tmp_path: Path) -> None:
    a, b = _encoder(), _encoder()
    pretrain(images, a, _cfg("simclr"), tmp_path / "a", progress=False)
    pretrain(images, b, _cfg("simclr"), tmp_path / "b", resume=True, progress=False)
    _assert_same(a.state_dict(), b.state_dict())


def test_zero_epochs_saves_initial_encoder(images: torch.Tensor, tmp_path: Path) -> None:
    enc = _encoder()
    before = _clone_state(enc)
    res = pretrain(images, enc, _cfg("densecl", epochs=0), tmp_path, progress=False)
    assert res.epochs_run == 0 and res.losses == [] and res.images_per_second == 0.0
    loaded, ckpt = load_encoder(tmp_path / ENCODER_FILE)
    assert ckpt["epochs"] == 0
    _assert_same(loaded.state_dict(), before)
    _assert_same(enc.state_dict(), before)


def test_freeze_bn_keeps_running_stats(images: torch.Tensor, tmp_path: Path) -> None:
    def bn_stats(enc: Encoder) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in enc.state_dict().items() if "running_" in k or "num_batches" in k}

    for method in ("densecl", "moco"):
        enc = _encoder()
        before, weights = bn_stats(enc), _clone_state(enc)
        pretrain(images, enc, _cfg(method, freeze_bn=True), tmp_path / method, progress=False)
        _assert_same(bn_stats(enc), before)
        assert any(not torch.equal(weights[k], v) for k, v in enc.state_dict().items() if k.endswith("conv1.weight"))
    # without freezing, the statistics do move
    enc = _encoder()
    before = bn_stats(enc)
    pretrain(images, enc, _cfg("simclr"), tmp_path / "free", progress=False)
    assert any(not torch.equal(before[k], v) for k, v in bn_stats(enc).items())


def test_input_validation(images: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="method"):
        PretrainConfig(method="byol")
    with pytest.raises(ValueError, match="at least 2"):
        pretrain(images[:1], _encoder(), _cfg("simclr"), tmp_path, progress=False)


def test_contrastive_model_embed_shapes() -> None:
    model = ContrastiveModel(_encoder(), _cfg("densecl")).eval()
    with torch.no_grad():
        z, dense = model.embed(torch.rand(3, 1, 32, 32))
    assert z.shape == (3, 16) and dense.shape == (3, 16, 4, 4)
    simclr = ContrastiveModel(_encoder(), _cfg("simclr")).eval()
    with torch.no_grad():
        z, dense = simclr.embed(torch.rand(2, 1, 32, 32))
    assert z.shape == (2, 16) and dense is None


def test_lr_schedule_and_queue_ring_buffer() -> None:
    base, total, warmup = 1.0, 10, 2
    lrs = [_lr_at(s, total, warmup, base) for s in range(total)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # cosine decay after warm-up
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    queue = torch.zeros(5, 2)
    keys = torch.arange(8.0).view(4, 2)
    q1, p1 = _enqueue(queue, 3, keys)
    assert p1 == 2 and torch.equal(queue, torch.zeros(5, 2))  # not modified in place
    assert torch.equal(q1[[3, 4, 0, 1]], keys) and torch.equal(q1[2], torch.zeros(2))


def test_densecl_objective_combines_global_and_dense() -> None:
    import inspect

    import torch.nn.functional as F

    from pipeline.contrastive.losses import DenseInfoNCELoss, InfoNCEQueueLoss, NTXentLoss
    from pipeline.contrastive.pretrain import _loss
    from pipeline.contrastive.views import correspondence, render_views, sample_affines

    cfg = _cfg("densecl", dense_weight=0.3)
    torch.manual_seed(0)
    model = ContrastiveModel(_encoder(), cfg).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 64, 64, generator=g)
    t0 = sample_affines(4, cfg.views, g)
    t1 = sample_affines(4, cfg.views, g, centers=t0[:, :, 2])
    v0, v1 = render_views(x, t0, 32), render_views(x, t1, 32)
    nt, dl = NTXentLoss(cfg.temperature), DenseInfoNCELoss(cfg.temperature, max_negatives=10**6)
    kwargs = dict(model=model, key_model=None, cfg=cfg, v0=v0, v1=v1, theta0=t0, theta1=t1, queue=None, g=g,
                  ntxent=nt, infonce=InfoNCEQueueLoss(), dense_loss=dl)
    params = inspect.signature(_loss).parameters
    kwargs.update({k: None for k in params if k not in kwargs})  # optional extras (e.g. other objectives' losses)
    with torch.no_grad():
        got = _loss(**kwargs)
        z0, d0 = model.embed(v0)
        z1, d1 = model.embed(v1)
        grid01, valid01 = correspondence(t0, t1, 4, 4)
        grid10, valid10 = correspondence(t1, t0, 4, 4)
        assert valid01.any() and valid10.any()
        k01 = F.grid_sample(d1, grid01, mode="bilinear", align_corners=False)
        k10 = F.grid_sample(d0, grid10, mode="bilinear", align_corners=False)
        dense = 0.5 * (dl(d0, k01, valid01) + dl(d1, k10, valid10))
        expected = 0.7 * nt(z0, z1) + 0.3 * dense
    assert dense > 0
    torch.testing.assert_close(got, expected)


# --------------------------------------------------------------------------- anomaly-like perturbations


def test_spotdiff_trains_deterministically(images: torch.Tensor, tmp_path: Path) -> None:
    cfg = _cfg("spotdiff", perturb=PerturbConfig(prob=0.7))
    runs = []
    for i in range(2):
        enc = _encoder()
        before = _clone_state(enc)
        res = pretrain(images, enc, cfg, tmp_path / str(i), progress=False)
        assert res.epochs_run == 1 and len(res.losses) == 1
        assert all(math.isfinite(x) and x > 0 for x in res.losses)
        assert any(not torch.equal(before[k], v) for k, v in enc.state_dict().items() if k.endswith("weight"))
        runs.append((_clone_state(enc), res.losses))
    _assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    state = torch.load(tmp_path / "0" / STATE_FILE, map_location="cpu", weights_only=True)
    assert any(k.startswith("dense_head.") for k in state["model"])
    assert state["config"]["method"] == "spotdiff"
    enc = _encoder()
    other = pretrain(images, enc, _cfg("spotdiff", seed=1, perturb=PerturbConfig(prob=0.7)), tmp_path / "other", progress=False)
    assert other.losses != runs[0][1]


def test_spotdiff_needs_perturbations(images: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="perturb"):
        pretrain(images, _encoder(), _cfg("spotdiff"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="perturb"):
        pretrain(images, _encoder(), _cfg("spotdiff", perturb=PerturbConfig(prob=0.0)), tmp_path, progress=False)


def test_densecl_with_perturbation_hard_negatives(images: torch.Tensor, tmp_path: Path) -> None:
    plain = pretrain(images, _encoder(), _cfg("densecl"), tmp_path / "plain", progress=False)
    enc = _encoder()
    res = pretrain(images, enc, _cfg("densecl", perturb=PerturbConfig(prob=0.7)), tmp_path / "hard", progress=False)
    assert res.epochs_run == 1 and all(math.isfinite(x) and x > 0 for x in res.losses)
    assert res.losses != plain.losses  # the perturbations take part
    loaded, ckpt = load_encoder(res.encoder_path)
    _assert_same(loaded.state_dict(), enc.state_dict())
    assert ckpt["pretrain"]["perturb"]["prob"] == 0.7


def test_pretrain_step_is_deterministic_whatever_the_global_rng(tiny_data: Path, tmp_path: Path) -> None:
    """The from-scratch initialisation is part of the seeded run: a new process (another global RNG state) gives the same encoder."""
    from pipeline.steps import pretrain_step

    states = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # what a fresh process, or earlier work in this one, leaves behind
        pretrain_step(tiny_data / "split.json", tmp_path / str(i), "smoke", epochs=1, progress=False)
        states.append(load_encoder(tmp_path / str(i) / ENCODER_FILE)[0].state_dict())
    _assert_same(states[0], states[1])
    # pretrain.json's digest names the saved weights: equal here, and equal to the file's own digest
    import json

    from pipeline.steps import state_digest

    summaries = [json.loads((tmp_path / str(i) / "pretrain.json").read_text()) for i in range(2)]
    assert summaries[0]["encoder_digest"] == summaries[1]["encoder_digest"] == state_digest(load_encoder(tmp_path / "0" / ENCODER_FILE)[0])
    assert summaries[0]["machine"]["torch_threads"] == torch.get_num_threads() and summaries[0]["machine"]["cpu"]


def test_state_digest_sees_one_changed_bit() -> None:
    from pipeline.steps import state_digest

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert state_digest(a) == state_digest(b)
    with torch.no_grad():
        b.weight.view(-1)[4] = torch.nextafter(b.weight.view(-1)[4], torch.tensor(1e9))
    assert state_digest(a) != state_digest(b)


def test_msc_center_is_fixed_from_the_initial_weights(images: torch.Tensor, tmp_path: Path) -> None:
    """The centre is taken once, before the first step: one epoch or two, the same centre."""
    one = pretrain(images, _encoder(), _cfg("msc", epochs=1), tmp_path / "one", progress=False)
    two = pretrain(images, _encoder(), _cfg("msc", epochs=2), tmp_path / "two", progress=False)
    assert one.losses[0] == two.losses[0]
    c1 = torch.load(tmp_path / "one" / STATE_FILE, weights_only=True)["center"]
    c2 = torch.load(tmp_path / "two" / STATE_FILE, weights_only=True)["center"]
    assert torch.equal(c1, c2)
    other = torch.load(tmp_path / "one" / STATE_FILE, weights_only=True)
    assert other["config"]["method"] == "msc" and other["config"]["angular_weight"] == 0.0
    with_angular = pretrain(images, _encoder(), _cfg("msc", angular_weight=1.0), tmp_path / "ang", progress=False)
    assert with_angular.losses != one.losses


def test_resume_state_written_before_a_setting_existed(images: torch.Tensor, tmp_path: Path) -> None:
    """A state file whose config lacks a setting added later (here angular_weight) resumes: the
    missing setting takes its default, which is what that run trained with."""
    cfg = _cfg("densecl", epochs=2)
    with pytest.raises(_Killed):
        pretrain(images, _encoder(), cfg, tmp_path, progress=False, on_epoch=_kill_after(1))
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    del state["config"]["angular_weight"]
    torch.save(state, tmp_path / STATE_FILE)
    res = pretrain(images, _encoder(), cfg, tmp_path, resume=True, progress=False)
    assert res.epochs_run == 1
    state["config"]["momentum"] = 0.5  # a setting that really differs is still refused
    torch.save(state, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="another pretraining config"):
        pretrain(images, _encoder(), cfg, tmp_path, resume=True, progress=False)


def test_channels_last_is_deterministic_and_trains_the_same_function(images: torch.Tensor, tmp_path: Path) -> None:
    """pretrain.channels_last changes the memory layout only: seeded runs repeat exactly, the losses match
    the contiguous run's to float tolerance, and the saved encoder loads and embeds like any other."""
    runs = []
    for i, cl in enumerate((True, True, False)):
        enc = _encoder()
        res = pretrain(images, enc, _cfg("densecl", channels_last=cl), tmp_path / str(i), progress=False)
        runs.append((_clone_state(enc), res.losses))
    _assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert np.allclose(runs[0][1], runs[2][1], rtol=1e-3, atol=1e-4)
    # AdamW normalizes each update: a near-zero gradient summed in another order can move a weight by up
    # to lr per step (2 steps here), so weights agree to that, not to float rounding
    for k, v in runs[0][0].items():
        assert torch.allclose(v.float(), runs[2][0][k].float(), rtol=0, atol=2 * 1e-3 + 1e-5), k
    loaded, _ = load_encoder(tmp_path / "0" / ENCODER_FILE)
    x = images[:2].float() / 255.0
    assert all(torch.isfinite(t).all() for t in loaded.eval()(x))


def test_precision_resolves_and_rejects_unknown_values() -> None:
    """"auto" means bf16 exactly where oneDNN has native bf16 kernels; the explicit values pass through."""
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        PretrainConfig(precision="fp16")


def test_bf16_forward_keeps_float32_losses_near_the_float32_loss(images: torch.Tensor) -> None:
    """Under precision bf16 only the model's forward runs in bfloat16: the loss is float32 and within
    bfloat16 rounding (8 mantissa bits) of the float32 loss on the same batch and weights."""
    from pipeline.contrastive.losses import PerturbationContrastLoss
    from pipeline.contrastive.perturb import perturb
    from pipeline.contrastive.views import render_views, sample_affines

    cfg = _cfg("spotdiff", perturb=PerturbConfig(prob=1.0))
    model = ContrastiveModel(_encoder(), cfg)
    g = torch.Generator().manual_seed(0)
    x = images[:4].float() / 255.0
    t0 = sample_affines(4, cfg.views, g)
    t1 = sample_affines(4, cfg.views, g, centers=t0[:, :, 2])
    v0, v1 = render_views(x, t0, 32), render_views(x, t1, 32)
    v1, pmask = perturb(v1, cfg.perturb, g)
    args = (model, None, cfg, v0, v1, t0, t1, None, g, None, None, None, PerturbationContrastLoss(cfg.temperature), pmask)
    full = _loss(*args)
    half = _loss(*args, amp=torch.bfloat16)
    assert full.dtype == half.dtype == torch.float32
    assert torch.isfinite(half) and abs(half.item() - full.item()) < 0.05 * abs(full.item())
    half.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())  # master weights stay float32


def test_bf16_pretraining_is_deterministic_and_records_its_precision(images: torch.Tensor, tmp_path: Path) -> None:
    """Seeded bf16 runs repeat bit for bit; the encoder stays float32 and both the result and
    encoder.pt say which precision ran."""
    runs = []
    for i in range(2):
        enc = _encoder()
        res = pretrain(images, enc, _cfg("densecl", epochs=2, precision="bf16", channels_last=True), tmp_path / str(i), progress=False)
        runs.append((_clone_state(enc), res))
    _assert_same(runs[0][0], runs[1][0])
    assert runs[0][1].losses == runs[1][1].losses and all(math.isfinite(v) for v in runs[0][1].losses)
    assert runs[0][1].precision == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in runs[0][0].values())
    loaded, ckpt = load_encoder(tmp_path / "0" / ENCODER_FILE)
    assert ckpt["precision"] == "bf16"
    auto = pretrain(images, _encoder(), _cfg("densecl", precision="auto"), tmp_path / "auto", progress=False)
    assert auto.precision == resolve_precision("auto", "cpu")


def test_machine_info_records_what_auto_precision_runs() -> None:
    """Records carry the CPU's family/model (one model name covers several generations) and whether
    `precision: auto` runs bf16 on it, so a result can be matched to the kernels that produced it."""
    from pipeline.steps import machine_info

    info = machine_info()
    assert info["bf16_native"] == (resolve_precision("auto", "cpu") == "bf16")
    assert {"cpu", "cpu_model", "cpu_capability", "torch_threads"} <= info.keys()
