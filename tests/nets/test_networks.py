"""Shapes and options of the transform networks (§3.1)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nets.architectures import build
from nets.style_net import StyleNet
from nets.superres_net import SuperResNet

OPTIONS = list(itertools.product(["batch", "instance", "none"], ["transposed", "resize_conv"],
                                 ["zero", "reflect"]))


@pytest.mark.parametrize(("norm", "upsample", "padding"), OPTIONS)
@pytest.mark.parametrize(("h", "w"), [(33, 47), (17, 18), (64, 64), (5, 9)])
def test_style_net_keeps_any_size(norm, upsample, padding, h, w):
    net = StyleNet(norm, upsample, padding).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 3, h, w))
    assert y.shape == (2, 3, h, w)
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(("norm", "upsample", "padding"), OPTIONS[::3])
def test_superres_net_multiplies_size(factor, residual, norm, upsample, padding):
    net = SuperResNet(factor, norm, upsample, padding, residual).eval()
    with torch.no_grad():
        y = net(torch.rand(1, 3, 13, 10))
    assert y.shape == (1, 3, 13 * factor, 10 * factor)


def test_residual_superres_starts_as_bicubic():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 12, 12) * 0.8 + 0.1
    net = SuperResNet(4, norm="none", residual=True).eval()
    with torch.no_grad():
        y = net(x)
    bicubic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert (y - bicubic).abs().max() < 0.02


def test_paper_defaults_and_layer_table():
    net = StyleNet()
    kinds = torch.nn.Conv2d | torch.nn.ConvTranspose2d
    convs = [m for m in net.modules() if isinstance(m, kinds)]
    assert [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in convs] == (
        [(3, 32, 9), (32, 64, 3), (64, 128, 3)] + [(128, 128, 3)] * 10
        + [(128, 64, 3), (64, 32, 3), (32, 3, 9)])
    assert isinstance(convs[-3], torch.nn.ConvTranspose2d)          # fractionally strided
    # BN after the 3 down and 2 up convs, and 2 in each of the 5 residual blocks
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 5 + 10
    sr8 = SuperResNet(8)
    ups = [m for m in sr8.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 3                                              # log2(8) stride-1/2 convs


def test_build_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown architecture 'gan'"):
        build("gan", {})
    with pytest.raises(ValueError, match="unknown norm"):
        StyleNet(norm="layer")  # type: ignore[arg-type]
