"""EfficientNet-Lite0 trunk (TF-ported layout: "same" padding, BN eps 1e-3, ReLU6, no SE).

Parameter names follow the widely shipped TF-converted checkpoint
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...) so that file loads without
renaming. Like the ResNet trunk, it stops at the deepest requested tap.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# (expand ratio, kernel, stride, out channels, repeats) per stage
_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
           (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.01

# tap name -> (flat block index whose output is tapped, channels, stride)
LITE0_TAPS: dict[str, tuple[int, int, int]] = {
    "stage1": (2, 24, 4),
    "stage2": (4, 40, 8),
    "stage3": (7, 80, 16),
    "stage4": (10, 112, 16),
    "stage5": (14, 192, 32),
}


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding, computed from the (static) input size.

    x: [N, C, H, W] -> [N, C, H + ph, W + pw]. Asymmetric for stride 2 on even
    sizes (the extra pixel goes right/bottom), which is what TF-trained weights expect.
    """
    pads = []
    for size in (int(x.shape[-1]), int(x.shape[-2])):  # F.pad wants last dim first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> kxk depthwise -> 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.kernel, self.stride = kernel, stride
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(same_pad(h, self.kernel, self.stride))))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite0 feature trunk returning the requested taps."""

    def __init__(self, in_channels: int, taps: tuple[str, ...]) -> None:
        super().__init__()
        unknown = set(taps) - set(LITE0_TAPS)
        if unknown:
            raise ValueError(f"efficientnet_lite0 has no tap(s) {sorted(unknown)}; choose from {list(LITE0_TAPS)}")
        self.taps = tuple(sorted(taps, key=lambda t: LITE0_TAPS[t][0]))
        self._tap_blocks = [LITE0_TAPS[t][0] for t in self.taps]
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks[: self._tap_blocks[-1] + 1])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N, C, H, W] normalized -> one tensor per tap, [N, C_t, H/s_t, W/s_t]."""
        x = F.relu6(self._bn0(self._conv_stem(same_pad(x, 3, 2))))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._tap_blocks:
                out.append(x)
        return out
