"""The style transfer network of §3.1 and the supplementary material, Table 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nets.layers import (
    Conv,
    ConvNormReLU,
    Norm,
    NormLayer,
    Padding,
    ResidualBlock,
    Stage,
    UpConvNormReLU,
    Upsample,
    norm_layer,
)


class StyleTable(nn.Module):
    """The layer table of the style network with the normalisation as a parameter: StyleNet
    (one style) and MultiStyleNet (conditional instance norm) are both this table."""

    def __init__(self, norm: NormLayer, upsample: Upsample, padding: Padding) -> None:
        super().__init__()
        self.down = Stage(
            ConvNormReLU(3, 32, 9, 1, norm, padding),    # (N, 32, H, W)
            ConvNormReLU(32, 64, 3, 2, norm, padding),   # (N, 64, H/2, W/2)
            ConvNormReLU(64, 128, 3, 2, norm, padding),  # (N, 128, H/4, W/4)
        )
        self.res = Stage(*(ResidualBlock(128, norm, padding) for _ in range(5)))
        self.up = Stage(
            UpConvNormReLU(128, 64, norm, upsample, padding),  # (N, 64, H/2, W/2)
            UpConvNormReLU(64, 32, norm, upsample, padding),   # (N, 32, H, W)
        )
        self.out = Conv(32, 3, 9, 1, padding)                  # (N, 3, H, W)

    def transform(self, x: torch.Tensor, mix: torch.Tensor | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Two stride-2 stages need sides divisible by 4; pad by replication, crop afterwards.
        ph, pw = -h % 4, -w % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = self.out(self.up(self.res(self.down(x, mix), mix), mix))
        # Scaled tanh keeps the output in the pixel range, as in the paper.
        return ((torch.tanh(y) + 1) / 2)[..., :h, :w]


class StyleNet(StyleTable):
    """Image in [0, 1], (N, 3, H, W) -> stylised image in [0, 1], exactly (N, 3, H, W).

    Defaults are the paper's: batch norm, fractionally-strided (transposed) convs, zero padding.
    """

    def __init__(self, norm: Norm = "batch", upsample: Upsample = "transposed",
                 padding: Padding = "zero") -> None:
        super().__init__(norm_layer(norm), upsample, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x, None)
