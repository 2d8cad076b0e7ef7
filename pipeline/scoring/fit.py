"""Fit the scorer on good images: memory bank, coreset, threshold calibration."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models.encoder import Encoder, EncoderConfig
from pipeline.checkpoint import load_checkpoint, save_atomic
from pipeline.metrics import robust_threshold
from pipeline.scoring.config import ScorerConfig
from pipeline.scoring.coreset import coreset_size, greedy_coreset
from pipeline.scoring.denoise import cross_fit_distances, image_keep_mask, keep_mask
from pipeline.scoring.inspector import Inspector
from pipeline.scoring.leave_one_out import SAMPLE_SEED_OFFSET, calibration_sample, leave_one_out_maps
from pipeline.scoring.projection import fit_pca
from pipeline.scoring.support import row_support

INSPECTOR_FILE = "inspector.pt"


@dataclass
class FitResult:
    inspector: Inspector
    n_patches: int  # training patches before trimming, denoising and the coreset
    bank_size: int
    n_bank_images: int  # images whose patches fed the bank (after trim_fraction)
    n_holdout_images: int  # images whose scores calibrated the threshold (held out, or scored leave-one-out)
    threshold_raw: float
    holdout_scores: list[float]  # raw image scores of those calibration images
    feature_seconds: float  # patch features and projection (the filters' passes are filter_seconds)
    coreset_seconds: float
    seconds: float
    n_denoised: int = 0  # patches dropped by cross-fitted denoising (denoise_fraction)
    n_unsupported: int = 0  # coreset rows dropped for support below min_support
    trimmed: list[int] = field(default_factory=list)  # indices (into the fitted images) of bank images dropped by trim_fraction
    calibration_outliers: list[int] = field(default_factory=list)  # indices of held-out images set aside by calibration_fence
    holdout: list[int] = field(default_factory=list)  # indices of the calibration images, in the order of holdout_scores
    row_image: torch.Tensor | None = None  # [bank_size] long: the image (index into the fitted images) each bank row came from
    filter_seconds: float = 0.0  # cross-fitted trim_fraction and denoise_fraction passes (0 when both are off)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def extract_patch_features(inspector: Inspector, images: torch.Tensor, batch_size: int = 16, progress: bool = False,
                           project: bool = True) -> torch.Tensor:
    """images uint8 [N, C, S, S] -> patch features [N * h * w, D] (project=False: before the learnt projection, [.., C_p])."""
    out = []
    for sl in tqdm(_batches(images.shape[0], batch_size), desc="features", disable=not progress, leave=False):
        x = images[sl].float() / 255.0
        f = inspector.features(x) if project else inspector.patch_channels(x)  # [n, D, h, w]
        out.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    return torch.cat(out)


@torch.no_grad()
def raw_maps(inspector: Inspector, images: torch.Tensor, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """images uint8 [N, C, S, S] -> unnormalized maps [N, S, S]."""
    out = [inspector.raw_map(images[sl].float() / 255.0)
           for sl in tqdm(_batches(images.shape[0], batch_size), desc="scoring", disable=not progress, leave=False)]
    return torch.cat(out)


def split_holdout(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of n good images into (bank indices, holdout indices).

    At least one image goes each way when n >= 2; with n == 1 the single image
    serves both (the threshold is then only a lower bound: warn upstream).
    """
    perm = torch.randperm(n, generator=generator)
    if n == 1:
        return perm, perm
    k = min(n - 1, max(1, round(fraction * n)))
    return perm[k:].sort().values, perm[:k].sort().values


TRIM_SEED_OFFSET = 2  # the trim's generator is seeded with scorer.seed + this (benchmarks/trim_ranking.py ranks as the fit does)


def coreset_options(cfg: ScorerConfig) -> dict[str, Any]:
    """The greedy coreset's keyword options (`greedy_coreset`, `image_keep_mask`) from the scorer config."""
    return dict(proj_dim=cfg.coreset_proj_dim, chunk_size=cfg.coreset_chunk, refine=cfg.coreset_refine)


def inspector_image_scores(probe: Inspector) -> Callable[[torch.Tensor], torch.Tensor]:
    """Patch distance grids [k, 1, h, w] -> image scores [k] as `probe` makes them (its map, then its reduction):
    the leave-one-out trim's `to_scores`."""
    def to_scores(d: torch.Tensor) -> torch.Tensor:
        return probe.reduce(probe.distance_map(d))
    return to_scores


def bank_patch_features(encoder: Encoder, images: torch.Tensor, cfg: ScorerConfig, *, progress: bool = False
                        ) -> tuple[Inspector, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, tuple[int, int]]:
    """Good images uint8 [N, C, S, S] -> (probe: an Inspector with a 1-row bank, for its maps; patch features
    [N * h * w, D], image-major, projected as the bank will be; the learnt projection (weight [D, C_p],
    bias [D]) or None; the patch grid (h, w))."""
    probe = Inspector(encoder, cfg, bank_size=1).eval()
    feats = extract_patch_features(probe, images, progress=progress, project=False)  # [P, C_p]
    projection = None
    if probe.learnt_projection:
        projection = fit_pca(feats, probe.proj_weight.shape[0], whiten=cfg.projection == "whiten")
        feats = torch.cat([torch.addmm(projection[1], x, projection[0].T) for x in feats.split(65536)])  # [P, D]
    with torch.no_grad():
        grid = tuple(probe.patch_channels(images[:1].float() / 255.0).shape[-2:])  # (h, w) patch grid
    return probe, feats, projection, grid


def fit_inspector(encoder: Encoder, images: torch.Tensor, cfg: ScorerConfig, *, progress: bool = True) -> FitResult:
    """Build a calibrated `Inspector` from good images uint8 [N, C, S, S].

    Bank images give the memory bank (coreset of their patch features); the false-alarm
    threshold comes from good images the bank has not seen (no defect labels needed): held
    out of the bank (`calibration: holdout`), or every image in the bank and a sample scored
    against the bank less its own rows (`leave_one_out`).
    """
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        raise ValueError(f"fit expects images resized to {cfg.image_size}, got {tuple(images.shape[-2:])}")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    encoder.eval()
    loo = cfg.calibration == "leave_one_out"
    if loo:
        if images.shape[0] < 2:
            raise ValueError("leave-one-out calibration needs at least 2 good training images")
        bank_idx = torch.arange(images.shape[0])
    else:
        bank_idx, hold_idx = split_holdout(images.shape[0], cfg.holdout_fraction, g)
    probe, feats, projection, grid = bank_patch_features(encoder, images[bank_idx], cfg, progress=progress)  # feats [P, D]
    n_patches = feats.shape[0]
    per_image = n_patches // len(bank_idx)
    image_of = torch.arange(len(bank_idx)).repeat_interleave(per_image)  # [P]: bank image of each patch
    coreset_kw = coreset_options(cfg)
    n_img, trimmed, kept = len(bank_idx), [], bank_idx  # kept[i]: the image index of kept bank image i
    t_filter = 0.0
    if cfg.trim_fraction > 0:  # whole images that look defective next to the others: likely unlabeled defects
        tf = time.perf_counter()
        to_scores = inspector_image_scores(probe) if cfg.trim_score == "leave_one_out" else None
        keep_img = image_keep_mask(feats, n_img, cfg.trim_fraction, cfg.coreset_ratio, cfg.max_bank,
                                   torch.Generator().manual_seed(cfg.seed + TRIM_SEED_OFFSET), rounds=cfg.trim_rounds, fence=cfg.trim_fence,
                                   to_scores=to_scores, grid=grid, **coreset_kw)  # [n_img]
        t_filter += time.perf_counter() - tf
        trimmed, n_img, kept = bank_idx[~keep_img].tolist(), int(keep_img.sum()), bank_idx[keep_img]
        feats = feats[keep_img[image_of]]  # still image-major, kept images only
        image_of = torch.arange(n_img).repeat_interleave(per_image)
    if loo:  # the calibration images' full patch grids, kept before denoising thins the patches
        calib = calibration_sample(n_img, cfg.calibration_images, torch.Generator().manual_seed(cfg.seed + SAMPLE_SEED_OFFSET))  # [n] kept-image ids
        calib_feats = feats.view(n_img, per_image, -1)[calib].reshape(-1, feats.shape[1])
    n_denoised = 0
    if cfg.denoise_fraction > 0:  # before the coreset, which would pick exactly those far-out patches first
        tf = time.perf_counter()
        dist = cross_fit_distances(feats, n_img, cfg.coreset_ratio, cfg.max_bank, torch.Generator().manual_seed(cfg.seed + 1),
                                   **coreset_kw)
        t_filter += time.perf_counter() - tf
        keep = keep_mask(dist, cfg.denoise_fraction)
        feats, image_of, n_denoised = feats[keep], image_of[keep], int((~keep).sum())
    t_feat = time.perf_counter() - t0 - t_filter
    n_select = coreset_size(feats.shape[0], cfg.coreset_ratio, cfg.max_bank)
    t1 = time.perf_counter()
    sel = greedy_coreset(feats, n_select, generator=g, **coreset_kw)
    n_unsupported = 0
    if cfg.min_support > 1:  # rows seen in fewer images than that are likely one image's defect
        supported = row_support(feats, image_of, feats[sel], bank_chunk=cfg.knn_chunk) >= cfg.min_support
        if not supported.any():
            raise ValueError(f"scorer.min_support {cfg.min_support}: no bank row is supported by that many of the "
                             f"{n_img} bank images; lower min_support or fit on more images")
        sel, n_unsupported = sel[supported], int((~supported).sum())
    t_core = time.perf_counter() - t1
    inspector = Inspector(encoder, cfg, bank_size=len(sel)).eval()
    if projection is not None:
        inspector.set_projection(*projection)
    inspector.set_bank(feats[sel])
    row_image = image_of[sel]  # [B] kept-image id of each bank row
    if loo:
        hold_idx = kept[calib]
        maps = leave_one_out_maps(calib_feats, calib, feats[sel], row_image, grid, inspector.distance_map, chunk=cfg.knn_chunk)
        del calib_feats
    else:
        maps = raw_maps(inspector, images[hold_idx], progress=progress)
    del feats
    scores = inspector.reduce(maps).numpy()
    # held-out images may be unlabeled defects: gross outliers do not set the threshold (calibration_fence)
    thr, outlier = robust_threshold(scores, cfg.target_false_alarm_rate, cfg.calibration_fence)
    inspector.set_threshold(thr, float(maps[torch.from_numpy(~outlier)].mean()))
    return FitResult(inspector, n_patches, len(sel), n_img, len(hold_idx), thr, scores.tolist(), t_feat, t_core, time.perf_counter() - t0,
                     n_denoised, n_unsupported, trimmed, hold_idx[torch.from_numpy(outlier)].tolist(), hold_idx.tolist(),
                     kept[row_image], t_filter)


def save_inspector(inspector: Inspector, path: str | Path, meta: dict[str, Any]) -> Path:
    from pipeline.config import to_dict

    return save_atomic({"state_dict": inspector.state_dict(), "encoder_config": to_dict(inspector.encoder.cfg),
                        "scorer_config": to_dict(inspector.cfg), "bank_size": int(inspector.memory_bank.shape[0]),
                        "meta": meta}, path)


def load_inspector(path: str | Path) -> tuple[Inspector, dict[str, Any]]:
    """Rebuild an `Inspector` from `inspector.pt` (weights_only); returns (inspector, meta)."""
    from pipeline.config import from_dict

    ckpt = load_checkpoint(path)
    encoder = Encoder(from_dict(EncoderConfig, ckpt["encoder_config"], where=f"{path}:encoder_config"))
    scorer_cfg = dict(ckpt["scorer_config"])
    scorer_cfg.setdefault("agg_zero_pad", False)  # files written before the option averaged valid cells only
    scorer_cfg.setdefault("projection", "group")  # files written before learnt projections averaged channel groups
    inspector = Inspector(encoder, from_dict(ScorerConfig, scorer_cfg, where=f"{path}:scorer_config"), ckpt["bank_size"])
    inspector.load_state_dict(ckpt["state_dict"])
    return inspector.eval(), ckpt["meta"]
