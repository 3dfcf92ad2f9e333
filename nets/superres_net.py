"""The super-resolution networks of §3.1 for upsampling factors 4 and 8."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nets.layers import (
    Conv,
    ConvNormReLU,
    Norm,
    Padding,
    ResidualBlock,
    UpConvNormReLU,
    Upsample,
    norm_layer,
)


class SuperResNet(nn.Module):
    """Low-resolution image in [0, 1], (N, 3, H, W) -> (N, 3, f*H, f*W) in [0, 1].

    With `residual=True` the network predicts a correction added to bicubic upsampling of the
    input (not in the paper: it trains faster and keeps colours exact where nothing is learned).
    """

    def __init__(self, factor: int = 4, norm: Norm = "batch", upsample: Upsample = "transposed",
                 padding: Padding = "zero", residual: bool = False) -> None:
        super().__init__()
        if factor not in (2, 4, 8):
            raise ValueError(f"unsupported factor {factor}; expected 2, 4 or 8")
        self.factor = factor
        self.residual = residual
        nl = norm_layer(norm)
        self.head = ConvNormReLU(3, 64, 9, 1, nl, padding)                       # (N, 64, H, W)
        self.res = nn.Sequential(*(ResidualBlock(64, nl, padding) for _ in range(4)))
        self.up = nn.Sequential(*(UpConvNormReLU(64, 64, nl, upsample, padding)
                                  for _ in range(int(math.log2(factor)))))       # (N, 64, fH, fW)
        self.out = Conv(64, 3, 9, 1, padding)                                    # (N, 3, fH, fW)
        if residual:  # start as plain bicubic upsampling
            nn.init.normal_(self.out.conv.weight, std=1e-3)
            nn.init.zeros_(self.out.conv.bias)  # type: ignore[arg-type]  # Conv2d has a bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.up(self.res(self.head(x))))
        if self.residual:
            base = F.interpolate(x, scale_factor=self.factor, mode="bicubic", align_corners=False)
            return (base + y).clamp(0, 1)
        return (torch.tanh(y) + 1) / 2
