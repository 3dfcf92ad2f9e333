"""Building blocks of the transform networks (paper §3.1).

The normalisation is a parameter of every block (`NormLayer`: channels -> layer), so one layer
table serves the paper's batch norm, instance norm (Ulyanov et al. 2016) and the multi-style
network's conditional instance norm (Dumoulin et al. 2017). The last one reads each image's style
weights, `mix`: a `Stage` hands `mix` to the layers that take it, so the style is an argument of
`forward`, never state written into the modules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "none"]
Upsample = Literal["transposed", "resize_conv"]
Padding = Literal["zero", "reflect"]
NormLayer = Callable[[int], nn.Module]


def norm_layer(norm: Norm) -> NormLayer:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=True)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected batch, instance or none")


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose affine parameters are a weighted mix of per-style parameters."""

    def __init__(self, channels: int, num_styles: int) -> None:
        super().__init__()
        self.norm = _InstanceNorm(channels)
        self.scale = nn.Parameter(torch.ones(num_styles, channels))
        self.shift = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        mix = mix.to(self.scale.dtype)                        # (N, S)
        scale = (mix @ self.scale)[:, :, None, None]          # (N, C, 1, 1)
        shift = (mix @ self.shift)[:, :, None, None]
        return self.norm(x) * scale + shift


class _InstanceNorm(nn.InstanceNorm2d):
    """Instance norm without learned affine parameters that passes an identity affine
    explicitly: the ONNX export needs it to know the channel count after a pixel shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=False)
        self.ones: torch.Tensor
        self.zeros: torch.Tensor
        self.register_buffer("ones", torch.ones(channels), persistent=False)
        self.register_buffer("zeros", torch.zeros(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.ones, bias=self.zeros, eps=self.eps)


class Stage(nn.Sequential):
    """nn.Sequential that hands the style weights `mix` to the layers that take them."""

    def forward(self, x: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, mix) if isinstance(layer, _TAKES_MIX) else layer(x)
        return x


class Conv(nn.Module):
    """A 'same'-padded convolution whose padding mode is an option (zero as in the paper)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 padding: Padding = "zero") -> None:
        super().__init__()
        if padding not in ("zero", "reflect"):
            raise ValueError(f"unknown padding {padding!r}; expected zero or reflect")
        mode: Literal["zeros", "reflect"] = "zeros" if padding == "zero" else "reflect"
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, padding_mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvNormReLU(Stage):
    """Every non-residual, non-output convolution is followed by normalisation and ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: NormLayer,
                 padding: Padding = "zero") -> None:
        super().__init__(Conv(c_in, c_out, kernel, stride, padding), norm(c_out),
                         nn.ReLU(inplace=True))


class UpConvNormReLU(Stage):
    """A stride-1/2 convolution: transposed (the paper) or nearest-resize then conv (Odena 2016)."""

    def __init__(self, c_in: int, c_out: int, norm: NormLayer,
                 upsample: Upsample = "transposed", padding: Padding = "zero") -> None:
        if upsample == "transposed":
            up: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1)]
        elif upsample == "resize_conv":
            up = [nn.Upsample(scale_factor=2, mode="nearest"), Conv(c_in, c_out, 3, 1, padding)]
        else:
            raise ValueError(f"unknown upsample {upsample!r}; expected transposed or resize_conv")
        super().__init__(*up, norm(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut, as in Gross & Wilber [44] (no final ReLU)."""

    def __init__(self, channels: int, norm: NormLayer, padding: Padding = "zero") -> None:
        super().__init__()
        self.body = Stage(
            Conv(channels, channels, 3, 1, padding), norm(channels), nn.ReLU(inplace=True),
            Conv(channels, channels, 3, 1, padding), norm(channels),
        )

    def forward(self, x: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.body(x, mix)


_TAKES_MIX = (Stage, ResidualBlock, ConditionalInstanceNorm)
