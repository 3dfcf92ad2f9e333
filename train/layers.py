"""Building blocks shared by the style and super-resolution transform networks (paper §3.1)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "instance", "none"]
Upsample = Literal["transposed", "resize_conv"]
Padding = Literal["zero", "reflect"]


def make_norm(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected batch, instance or none")


class Conv(nn.Module):
    """A 'same'-padded convolution whose padding mode is an option (zero as in the paper)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 padding: Padding = "zero") -> None:
        super().__init__()
        if padding not in ("zero", "reflect"):
            raise ValueError(f"unknown padding {padding!r}; expected zero or reflect")
        mode = "zeros" if padding == "zero" else "reflect"
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, padding_mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvNormReLU(nn.Sequential):
    """Every non-residual, non-output convolution is followed by normalisation and ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 norm: Norm = "batch", padding: Padding = "zero") -> None:
        super().__init__(Conv(c_in, c_out, kernel, stride, padding), make_norm(norm, c_out),
                         nn.ReLU(inplace=True))


class UpConvNormReLU(nn.Sequential):
    """A stride-1/2 convolution: transposed (the paper) or nearest-resize then conv (Odena 2016)."""

    def __init__(self, c_in: int, c_out: int, norm: Norm = "batch",
                 upsample: Upsample = "transposed", padding: Padding = "zero") -> None:
        if upsample == "transposed":
            up: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1)]
        elif upsample == "resize_conv":
            up = [nn.Upsample(scale_factor=2, mode="nearest"), Conv(c_in, c_out, 3, 1, padding)]
        else:
            raise ValueError(f"unknown upsample {upsample!r}; expected transposed or resize_conv")
        super().__init__(*up, make_norm(norm, c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut, as in Gross & Wilber [44] (no final ReLU)."""

    def __init__(self, channels: int, norm: Norm = "batch", padding: Padding = "zero") -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv(channels, channels, 3, 1, padding), make_norm(norm, channels),
            nn.ReLU(inplace=True),
            Conv(channels, channels, 3, 1, padding), make_norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
