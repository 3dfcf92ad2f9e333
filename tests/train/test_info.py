"""Parameter counts and GFLOPs against hand computations from the layer tables."""

from __future__ import annotations

import json

import pytest
from torch import nn

from nets.style_net import StyleNet
from nets.superres_net import SuperResNet
from train.__main__ import main
from train.info import gflops, measure, parameter_count


def conv(c_in: int, c_out: int, k: int) -> int:
    """Weights + biases of a k x k convolution (also a transposed one)."""
    return c_in * c_out * k * k + c_out


def test_style_net_parameters_match_the_layer_table():
    bn = 2  # batch norm: a scale and a shift per channel (running stats are buffers)
    expected = (
        conv(3, 32, 9) + bn * 32
        + conv(32, 64, 3) + bn * 64
        + conv(64, 128, 3) + bn * 128
        + 5 * 2 * (conv(128, 128, 3) + bn * 128)   # five residual blocks of two convs
        + conv(128, 64, 3) + bn * 64                # stride-1/2 (transposed) convs
        + conv(64, 32, 3) + bn * 32
        + conv(32, 3, 9)
    )
    assert expected == 1_679_235
    assert parameter_count(StyleNet()) == expected


def test_superres_x4_parameters_match_the_layer_table():
    expected = (conv(3, 64, 9) + 2 * 64 + 4 * 2 * (conv(64, 64, 3) + 2 * 64)
                + 2 * (conv(64, 64, 3) + 2 * 64) + conv(64, 3, 9))
    assert parameter_count(SuperResNet(4)) == expected


def test_single_conv_gflops_is_twice_the_multiply_adds():
    # 9x9 conv 3 -> 32 on 256x256, stride 1: every output value takes 3*9*9 multiply-adds.
    assert gflops(nn.Conv2d(3, 32, 9, padding=4), (1, 3, 256, 256)) == pytest.approx(
        2 * 256 * 256 * 32 * 3 * 9 * 9 / 1e9, rel=1e-12)
    # Stride 2 quarters the outputs.
    assert gflops(nn.Conv2d(32, 64, 3, 2, 1), (1, 32, 256, 256)) == pytest.approx(
        2 * 128 * 128 * 64 * 32 * 9 / 1e9, rel=1e-12)
    # A transposed conv scatters every input value through the whole kernel.
    assert gflops(nn.ConvTranspose2d(128, 64, 3, 2, 1, output_padding=1),
                  (1, 128, 64, 64)) == pytest.approx(2 * 64 * 64 * 128 * 64 * 9 / 1e9,
                                                     rel=1e-12)


def test_style_net_gflops_at_256_match_the_layer_table():
    macs = (256**2 * 3 * 32 * 81 + 128**2 * 32 * 64 * 9 + 64**2 * 64 * 128 * 9
            + 10 * 64**2 * 128 * 128 * 9
            + 64**2 * 128 * 64 * 9 + 128**2 * 64 * 32 * 9      # transposed: input sizes
            + 256**2 * 32 * 3 * 81)
    table = measure((256,))
    assert table["style"]["gflops"]["256"] == pytest.approx(2 * macs / 1e9, rel=1e-12)
    # Convolution cost is linear in the number of pixels.
    assert measure((512,))["style"]["gflops"]["512"] == pytest.approx(8 * macs / 1e9)


def test_info_command_writes_json(tmp_path, capsys):
    out = tmp_path / "info.json"
    assert main(["info", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert set(table) == {"style", "superres_x4", "superres_x8"}
    assert table["superres_x8"]["input"] == {"256": 32, "512": 64, "1024": 128}
    assert table["style"]["parameters"] == 1_679_235
    assert "superres_x4" in capsys.readouterr().out
