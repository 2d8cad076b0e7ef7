"""ResNet18 trunk with multi-scale taps, 1-channel input supported natively.

The scorer reads patch features from intermediate stages (stride 8 and 16), so
the trunk stops at the deepest tap it is asked for: layer4 is never computed
unless tapped, which keeps pretraining and inference cheap.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

# name -> (channels, stride) of each tap point of torchvision's resnet18
RESNET18_TAPS: dict[str, tuple[int, int]] = {
    "layer1": (64, 4),
    "layer2": (128, 8),
    "layer3": (256, 16),
    "layer4": (512, 32),
}
_ORDER = ("layer1", "layer2", "layer3", "layer4")


class ResNetTrunk(nn.Module):
    """torchvision resnet18 without its classifier, returning the requested taps.

    Module names equal torchvision's, so a torchvision state_dict loads as is.
    """

    def __init__(self, in_channels: int, taps: tuple[str, ...]) -> None:
        super().__init__()
        unknown = set(taps) - set(RESNET18_TAPS)
        if unknown:
            raise ValueError(f"resnet18 has no tap(s) {sorted(unknown)}; choose from {list(_ORDER)}")
        net = torchvision.models.resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.taps = tuple(sorted(taps, key=_ORDER.index))
        last = _ORDER.index(self.taps[-1])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        # only build the stages we run
        for name in _ORDER[: last + 1]:
            setattr(self, name, getattr(net, name))
        self._stages = _ORDER[: last + 1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N, C, H, W] normalized -> one tensor per tap, [N, C_t, H/s_t, W/s_t]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for name in self._stages:
            x = getattr(self, name)(x)
            if name in self.taps:
                out.append(x)
        return out
