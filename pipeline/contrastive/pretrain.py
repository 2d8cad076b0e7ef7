"""Contrastive pretraining of the encoder on unlabeled images of good parts.

Objectives (`PretrainConfig.method`):
- "simclr":  NT-Xent on globally pooled features of two views.
- "moco":    MoCo v2: momentum key encoder and a queue of negatives.
- "densecl": NT-Xent plus a dense InfoNCE over geometrically matched locations,
             because the scorer reads patch features, not pooled ones.
- "spotdiff": dense spot-the-difference: matched clean locations are positives,
             anomaly-like perturbations (`perturb.py`) the only negatives; good
             surface is never pushed apart from good surface.
- "msc":     mean-shifted contrast (Reiss and Hoshen) for fine-tuning pretrained
             weights: NT-Xent on the pooled features themselves (no head), as angles
             around the training images' feature centre, fixed before the first step.
The global embedding pools the *deepest tap the scorer uses*, so the loss shapes
exactly the features the scorer reads (and deeper stages are never computed).

Under torch.distributed (e.g. `torchrun`, see `flows.ddp`) the same loop runs data-parallel:
every rank draws the views of the whole global batch (ranks' generators stay in step),
embeds its shard through DistributedDataParallel, and the embeddings are all-gathered
before the loss, so each rank computes the loss of the whole batch and DDP's averaged
gradients equal single-process gradients (`_gather`). BatchNorm statistics are per
rank on CPU and synchronised (SyncBatchNorm) on CUDA. Rank 0 writes the checkpoints.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from models.encoder import Encoder, EncoderConfig
from models.heads import DenseProjectionHead, ProjectionHead
from pipeline.checkpoint import load_checkpoint, save_atomic
from pipeline.contrastive.augment import PhotometricConfig, photometric
from pipeline.contrastive.losses import (
    DenseInfoNCELoss, InfoNCEQueueLoss, MeanShiftedContrastLoss, NTXentLoss, PerturbationContrastLoss, feature_center,
)
from pipeline.contrastive.perturb import PerturbConfig, cell_mask, perturb
from pipeline.contrastive.views import ViewConfig, correspondence, render_views, sample_affines

METHODS = ("simclr", "moco", "densecl", "spotdiff", "msc")
PRECISIONS = ("fp32", "bf16", "auto")
DENSE_METHODS = ("densecl", "spotdiff")
STATE_FILE = "pretrain_state.pt"  # everything needed to resume
ENCODER_FILE = "encoder.pt"  # the encoder alone: state_dict + config


@dataclass
class PretrainConfig:
    method: str = "densecl"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    dense_weight: float = 0.5  # densecl: loss = (1 - w) * global + w * dense
    queue_size: int = 4096  # moco
    momentum: float = 0.99  # moco key encoder EMA
    angular_weight: float = 0.0  # msc: weight of the angular centre term (0: plain mean-shifted contrast)
    freeze_bn: bool = False  # keep pretrained BatchNorm statistics (fine-tuning)
    # NHWC activations: oneDNN's CPU convolutions run a training step of the default encoder about 18% faster
    # (0.47 -> 0.39 s at batch 32, 2 threads); sums run in another order, so not bit-identical to False
    channels_last: bool = False
    # "bf16": the model's forward under torch.autocast in bfloat16 (convolutions and matmuls; the losses stay
    # float32), about twice as fast on CPUs with native bf16 kernels (AVX512-BF16 / AMX); "auto": bf16 where
    # the device runs it natively (`resolve_precision`), float32 elsewhere; "fp32": float32 throughout
    precision: str = "fp32"
    # side the training images are loaded at before views are cut; None: the scorer's image_size.
    # Set it to keep the views' source resolution when the scorer's resolution changes.
    image_size: int | None = None
    seed: int = 0
    views: ViewConfig = field(default_factory=ViewConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)  # densecl hard negatives (prob 0: off)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown pretraining method {self.method!r}; choose from {METHODS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown pretrain.precision {self.precision!r}; choose from {PRECISIONS}")
        if isinstance(self.perturb, dict):  # nested configs given as dicts (overrides)
            self.perturb = PerturbConfig(**self.perturb)
        if self.method == "spotdiff" and self.perturb.prob <= 0:
            raise ValueError("pretrain.method 'spotdiff' needs pretrain.perturb.prob > 0 (its negatives are perturbations)")


@dataclass
class PretrainResult:
    encoder_path: Path
    epochs_run: int
    seconds: float
    images_per_second: float
    losses: list[float]
    precision: str = "fp32"  # what ran: "auto" resolved to "bf16" or "fp32"


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"auto" -> "bf16" where `device` has native bfloat16 kernels (oneDNN on CPUs with AVX512-BF16 or
    AMX; CUDA devices that support it), else "fp32"; "fp32" and "bf16" are returned as they are.

    Emulated bf16 (e.g. AVX2 CPUs) is slower than float32, hence the check."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


class ContrastiveModel(nn.Module):
    """Encoder + heads; `embed` returns the global projection and the dense map.

    The dense head reads all taps at the shallowest tap's resolution, the same
    patch features the scorer uses, so the dense loss shapes what is scored.
    """

    def __init__(self, encoder: Encoder, cfg: PretrainConfig) -> None:
        super().__init__()
        self.encoder = encoder
        # msc compares the backbone's own pooled features: a head would let it leave them untouched
        self.head = nn.Identity() if cfg.method == "msc" else ProjectionHead(encoder.tap_channels[-1], cfg.proj_hidden, cfg.proj_dim)
        dense_in = sum(encoder.tap_channels)
        self.dense_head = DenseProjectionHead(dense_in, cfg.proj_hidden, cfg.proj_dim) if cfg.method in DENSE_METHODS else None

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor | None], ...]:
        """Both views of a step, embedded separately (one call: DistributedDataParallel syncs once per forward)."""
        return self.embed(v0), self.embed(v1)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [N, C, h, w] -> (z [N, proj_dim] (msc: [N, C_last]), dense [N, proj_dim, h/s0, w/s0] or None)."""
        taps = self.encoder(x)
        z = self.head(taps[-1].mean(dim=(2, 3)))
        if self.dense_head is None:
            return z, None
        size = taps[0].shape[-2:]
        f = torch.cat([taps[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taps[1:]], dim=1)
        return z, self.dense_head(f)


def _world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(t: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate every rank's shard along dim 0 (identity in one process).

    Only this rank's shard carries gradients, so the backward pass needs no collectives;
    each rank's gradient is its shard's part of the whole-batch gradient, and the loss
    is scaled by the world size before backward so that DDP's average is their sum.
    """
    rank, world = _world()
    if t is None or world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank] = t
    return torch.cat(parts)


def _with_defaults(config: dict[str, Any]) -> dict[str, Any] | None:
    """A stored pretraining config with the settings added since at their defaults (None if unreadable)."""
    from pipeline.config import from_dict, to_dict

    try:
        return to_dict(from_dict(PretrainConfig, config, where="pretrain_state.config"))
    except (TypeError, ValueError):
        return None


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _freeze_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def _momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    for p_o, p_t in zip(online.parameters(), target.parameters()):
        p_t.mul_(m).add_(p_o.detach(), alpha=1 - m)
    for b_o, b_t in zip(online.buffers(), target.buffers()):
        b_t.copy_(b_o)


def save_encoder(encoder: Encoder, path: Path, meta: dict[str, Any]) -> Path:
    from pipeline.config import to_dict

    return save_atomic({"state_dict": encoder.state_dict(), "config": to_dict(encoder.cfg), **meta}, path)


def load_encoder(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder from `encoder.pt` (weights_only)."""
    from pipeline.config import from_dict

    ckpt = load_checkpoint(path)
    encoder = Encoder(from_dict(EncoderConfig, ckpt["config"], where=f"{path}:config"))
    encoder.load_state_dict(ckpt["state_dict"])
    return encoder, ckpt


def pretrain(
    images: torch.Tensor,
    encoder: Encoder,
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Train `encoder` in place on `images` (uint8 [N, C, S, S]); checkpoint every epoch.

    Writes `out_dir/encoder.pt` (the encoder, loadable alone) and
    `out_dir/pretrain_state.pt` (encoder, heads, optimizer, RNG, epoch) after every
    epoch, atomically, so a killed run resumes (`resume=True`) from its last epoch.
    `epochs == 0` just saves the initial encoder.
    """
    from pipeline.config import to_dict

    out_dir = Path(out_dir)
    device = torch.device(device)
    meta = dict(meta or {})
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"contrastive pretraining needs at least 2 images, got {n}")
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total_steps = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)  # head initialisation
    model = ContrastiveModel(encoder, cfg).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        model = model.to(memory_format=fmt)
    rank, world = _world()
    if world > 1 and batch % world:
        raise ValueError(f"the batch of {batch} images does not split evenly over {world} processes; choose a batch size divisible by {world}")
    if world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    key_model = copy.deepcopy(model).requires_grad_(False) if cfg.method == "moco" else None
    queue = F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim, generator=torch.Generator().manual_seed(cfg.seed)), dim=1).to(device)
    queue_ptr = 0
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if cfg.method == "spotdiff":  # its objective never reads the global head: nothing to synchronise there
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, [f"head.{n}" for n, _ in model.head.named_parameters()])
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    g = torch.Generator().manual_seed(cfg.seed)
    ntxent, infonce, dense_loss = NTXentLoss(cfg.temperature), InfoNCEQueueLoss(cfg.temperature), DenseInfoNCELoss(cfg.temperature)
    spot_loss = PerturbationContrastLoss(cfg.temperature)
    msc_loss = MeanShiftedContrastLoss(cfg.temperature, cfg.angular_weight)
    precision = resolve_precision(cfg.precision, device)
    amp = torch.bfloat16 if precision == "bf16" else None

    start_epoch, losses, seconds, seen = 0, [], 0.0, 0
    center: torch.Tensor | None = None  # msc: [C_last] unit centre of the training images' pooled features
    state_path = out_dir / STATE_FILE
    config_dict = to_dict(cfg)
    if resume and state_path.is_file():
        st = load_checkpoint(state_path)
        # compared with defaults filled in: a state written before a setting existed still resumes
        if _with_defaults(st["config"]) != config_dict:
            raise ValueError(f"{state_path} was written with another pretraining config; use a new --out folder or drop --resume")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        g.set_state(st["generator"])
        if key_model is not None:
            key_model.load_state_dict(st["key_model"])
            queue, queue_ptr = st["queue"].to(device), int(st["queue_ptr"])
        start_epoch, losses, seconds, seen = st["epoch"], list(st["losses"]), float(st["seconds"]), int(st["seen"])
        center = st.get("center")
    images = images.to(device)
    if cfg.method == "msc" and center is None and cfg.epochs > start_epoch:  # from the initial weights, before any step
        center = _msc_center(model, images, cfg, device, batch)
    if center is not None:
        center = center.to(device)

    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if cfg.freeze_bn:
            _freeze_bn(model.encoder)
            if key_model is not None:  # keys and queries must come from the same function
                _freeze_bn(key_model.encoder)
        perm = torch.randperm(n, generator=g)
        t0, epoch_loss = time.perf_counter(), 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"pretrain {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup, cfg.lr)
            x = images[perm[i * batch : (i + 1) * batch]].float() / 255.0  # [B, C, S, S]
            theta0 = sample_affines(x.shape[0], cfg.views, g)
            theta1 = sample_affines(x.shape[0], cfg.views, g, centers=theta0[:, :, 2])
            v0 = photometric(render_views(x, theta0.to(device), cfg.views.crop_size), cfg.photometric, g)
            v1 = photometric(render_views(x, theta1.to(device), cfg.views.crop_size), cfg.photometric, g)
            pmask = None
            if cfg.method in DENSE_METHODS and cfg.perturb.prob > 0:
                v1, pmask = perturb(v1, cfg.perturb, g)
            v0, v1 = v0.contiguous(memory_format=fmt), v1.contiguous(memory_format=fmt)
            if world > 1:  # this rank embeds its shard; _loss gathers the whole batch's embeddings
                v0, v1 = v0.chunk(world)[rank], v1.chunk(world)[rank]
            loss = _loss(net, key_model, cfg, v0, v1, theta0, theta1, queue, g, ntxent, infonce, dense_loss, spot_loss, pmask,
                         msc_loss=msc_loss, center=center, amp=amp)
            opt.zero_grad(set_to_none=True)
            (loss * world if world > 1 else loss).backward()  # DDP averages the ranks' shares of the gradient (see _gather)
            opt.step()
            if key_model is not None:
                _momentum_update(model, key_model, cfg.momentum)
                with torch.no_grad():
                    keys = F.normalize(_gather(key_model.embed(v1)[0]), dim=1)
                queue, queue_ptr = _enqueue(queue, queue_ptr, keys)
            epoch_loss += loss.item()
            seen += x.shape[0]
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{(i + 1) * batch / (time.perf_counter() - t0):.1f}")
        seconds += time.perf_counter() - t0
        losses.append(epoch_loss / steps_per_epoch)
        if world > 1:  # BatchNorm running statistics saw only this rank's shards: average them over the ranks
            for b in model.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b.div_(world)
        if rank == 0:
            save_encoder(model.encoder, out_dir / ENCODER_FILE, {**meta, "epochs": epoch + 1, "pretrain": config_dict, "precision": precision})
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": g.get_state(),
                 "epoch": epoch + 1, "losses": losses, "seconds": seconds, "seen": seen, "config": config_dict,
                 "queue": queue.cpu(), "queue_ptr": queue_ptr}
        if center is not None:
            state["center"] = center.cpu()
        if key_model is not None:
            state["key_model"] = key_model.state_dict()
        if rank == 0:
            save_atomic(state, state_path)
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    if rank == 0 and (cfg.epochs == 0 or not (out_dir / ENCODER_FILE).is_file()):
        save_encoder(model.encoder, out_dir / ENCODER_FILE, {**meta, "epochs": 0, "pretrain": config_dict, "precision": precision})
    model.encoder.eval()
    return PretrainResult(out_dir / ENCODER_FILE, cfg.epochs - start_epoch, seconds, seen / seconds if seconds else 0.0, losses,
                          precision)


def _loss(model, key_model, cfg, v0, v1, theta0, theta1, queue, g, ntxent, infonce, dense_loss, spot_loss, pmask=None,
          msc_loss=None, center=None, amp: torch.dtype | None = None) -> torch.Tensor:
    """The configured objective on one batch of view pairs (symmetric in the two views).

    pmask: bool [N, S, S] pixels of view 1 changed by anomaly-like perturbations, or None.
    center: [C_last] the msc centre, or None.
    amp: the autocast dtype of the model's forward (torch.bfloat16), or None for float32.
    """
    with torch.autocast(v0.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        (z0, d0), (z1, d1) = model(v0, v1)  # embed(v0), embed(v1)
    # the losses compare cosine similarities / temperature: float32, whatever the forward ran in
    z0, d0, z1, d1 = (t if t is None else t.float() for t in (z0, d0, z1, d1))
    z0, d0, z1, d1 = (_gather(t) for t in (z0, d0, z1, d1))  # the whole batch's embeddings under DDP
    if cfg.method == "msc":
        return msc_loss(z0, z1, center)
    if cfg.method == "spotdiff":  # PretrainConfig guarantees perturbations (pmask is set)
        k01, valid01, hard01, _ = _matched_keys(d0, d1, theta0, theta1, pmask)
        return spot_loss(d0, k01, valid01, hard01)
    if cfg.method == "moco":
        with torch.no_grad():
            k0, k1 = _gather(key_model.embed(v0)[0]), _gather(key_model.embed(v1)[0])
        return 0.5 * (infonce(z0, k1, queue) + infonce(z1, k0, queue))
    loss = ntxent(z0, z1)
    if cfg.method == "densecl":
        k01, valid01, hard01, pert1 = _matched_keys(d0, d1, theta0, theta1, pmask)
        k10, valid10, _, _ = _matched_keys(d1, d0, theta1, theta0, None)
        if pert1 is not None:
            valid10 = valid10 & ~pert1  # perturbed cells anchor nothing
        dense = 0.5 * (dense_loss(d0, k01, valid01, g, hard_negative=hard01) + dense_loss(d1, k10, valid10, g))
        loss = (1 - cfg.dense_weight) * loss + cfg.dense_weight * dense
    return loss


def _matched_keys(
    d0: torch.Tensor, d1: torch.Tensor, theta0: torch.Tensor, theta1: torch.Tensor, pmask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """View 1's dense map resampled at view 0's locations.

    d0, d1: [N, D, h, w]; pmask: bool [N, S, S] perturbed pixels of view 1, or None.
    Returns k01 [N, D, h, w], valid01 bool [N, h, w] (match inside view 1),
    hard01 bool [N, h, w] (the match is a perturbed cell; None without pmask) and
    pert1 bool [N, h, w] (view 1's perturbed cells on its own grid; None without pmask).
    """
    h, w = d0.shape[-2:]
    grid01, valid01 = correspondence(theta0, theta1, h, w)
    grid01 = grid01.to(d1.device)
    k01 = F.grid_sample(d1, grid01, mode="bilinear", align_corners=False)
    hard01 = pert1 = None
    if pmask is not None:
        pert1 = cell_mask(pmask, h, w)
        hard01 = F.grid_sample(pert1[:, None].float(), grid01, mode="nearest", align_corners=False)[:, 0] > 0
    return k01, valid01.to(d0.device), hard01, pert1


@torch.no_grad()
def _msc_center(model: ContrastiveModel, images: torch.Tensor, cfg: PretrainConfig, device: torch.device, batch: int) -> torch.Tensor:
    """The mean-shift centre: normalised mean of the unit pooled features of one seeded view per
    training image (the views the loss sees, without photometric jitter), initial weights,
    BatchNorm in inference mode. images: uint8 [N, C, S, S] -> [C_last]."""
    g = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: the training draws stay as they were
    was_training = model.training
    model.eval()
    feats = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].float() / 255.0
        v = render_views(x, sample_affines(x.shape[0], cfg.views, g).to(device), cfg.views.crop_size)
        feats.append(model.embed(v)[0])
    model.train(was_training)
    return feature_center(torch.cat(feats))


def _enqueue(queue: torch.Tensor, ptr: int, keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Ring-buffer write of keys [B, D] into queue [K, D]."""
    k = queue.shape[0]
    idx = (torch.arange(keys.shape[0]) + ptr) % k
    queue = queue.clone()
    queue[idx.to(queue.device)] = keys
    return queue, int((ptr + keys.shape[0]) % k)
