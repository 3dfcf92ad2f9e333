"""One network for many styles: conditional instance normalisation (Dumoulin et al. 2017).

The convolutions are shared by every style; each style owns only the scale and shift of each
normalisation layer. Mixing those parameters blends styles (`style=a:0.7,b:0.3`), and requests
for different styles run in one batch, since the style is an input, not a weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.layers import Conv, Padding, Upsample


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose affine parameters are a weighted mix of per-style parameters."""

    def __init__(self, channels: int, num_styles: int) -> None:
        super().__init__()
        self.norm = _InstanceNorm(channels)
        self.scale = nn.Parameter(torch.ones(num_styles, channels))
        self.shift = nn.Parameter(torch.zeros(num_styles, channels))
        self.mix: torch.Tensor | None = None  # (N, num_styles), set by MultiStyleNet.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.mix is not None, "call through MultiStyleNet.forward"
        scale = (self.mix @ self.scale)[:, :, None, None]   # (N, C, 1, 1)
        shift = (self.mix @ self.shift)[:, :, None, None]
        return self.norm(x) * scale + shift


class _InstanceNorm(nn.InstanceNorm2d):
    """Instance norm without learned affine parameters that passes an identity affine
    explicitly: the ONNX export needs it to know the channel count after a pixel shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=False)
        self.register_buffer("ones", torch.ones(channels), persistent=False)
        self.register_buffer("zeros", torch.zeros(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.ones, bias=self.zeros, eps=self.eps)


def _conv_norm_relu(c_in: int, c_out: int, k: int, stride: int, n: int, padding: Padding,
                    upsample: Upsample | None = None) -> nn.Sequential:
    if upsample == "transposed":
        conv: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1)]
    elif upsample == "resize_conv":
        conv = [nn.Upsample(scale_factor=2, mode="nearest"), Conv(c_in, c_out, 3, 1, padding)]
    else:
        conv = [Conv(c_in, c_out, k, stride, padding)]
    return nn.Sequential(*conv, ConditionalInstanceNorm(c_out, n), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int, n: int, padding: Padding) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv(channels, channels, 3, 1, padding), ConditionalInstanceNorm(channels, n),
            nn.ReLU(inplace=True),
            Conv(channels, channels, 3, 1, padding), ConditionalInstanceNorm(channels, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MultiStyleNet(nn.Module):
    """StyleNet's layer table (§3.1) with conditional instance norm.

    forward(x, mix): x (N, 3, H, W) in [0, 1]; mix (N, S) style weights, rows summing to 1
    (a one-hot row is one style). Returns (N, 3, H, W) in [0, 1].
    """

    def __init__(self, styles: list[str], upsample: Upsample = "resize_conv",
                 padding: Padding = "reflect") -> None:
        super().__init__()
        if not styles or len(set(styles)) != len(styles):
            raise ValueError(f"styles must be distinct names, got {styles}")
        self.styles = list(styles)
        n = len(styles)
        self.down = nn.Sequential(
            _conv_norm_relu(3, 32, 9, 1, n, padding),      # (N, 32, H, W)
            _conv_norm_relu(32, 64, 3, 2, n, padding),     # (N, 64, H/2, W/2)
            _conv_norm_relu(64, 128, 3, 2, n, padding),    # (N, 128, H/4, W/4)
        )
        self.res = nn.Sequential(*(_Residual(128, n, padding) for _ in range(5)))
        self.up = nn.Sequential(
            _conv_norm_relu(128, 64, 3, 1, n, padding, upsample),  # (N, 64, H/2, W/2)
            _conv_norm_relu(64, 32, 3, 1, n, padding, upsample),   # (N, 32, H, W)
        )
        self.out = Conv(32, 3, 9, 1, padding)                      # (N, 3, H, W)

    def init_from_single(self, single: nn.Module) -> None:
        """Start every style as a trained single-style StyleNet (same layer table and options):
        its convolutions, and its instance-norm affine parameters for every style."""
        state = self.state_dict()
        for key, value in single.state_dict().items():
            if key in state and state[key].shape == value.shape:
                state[key] = value
                continue
            base, kind = key.rsplit(".", 1)
            target = f"{base}.{'scale' if kind == 'weight' else 'shift'}"
            if target not in state:
                raise ValueError(f"{key} has no counterpart in MultiStyleNet")
            state[target] = value.expand_as(state[target]).clone()
        self.load_state_dict(state)

    def one_hot(self, indices: torch.Tensor) -> torch.Tensor:
        return F.one_hot(indices, len(self.styles)).float()

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        if mix.shape != (x.shape[0], len(self.styles)):
            raise ValueError(f"mix must be ({x.shape[0]}, {len(self.styles)}), "
                             f"got {tuple(mix.shape)}")
        for m in self.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.mix = mix.to(m.scale.dtype)
        h, w = x.shape[-2:]
        ph, pw = -h % 4, -w % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        y = self.out(self.up(self.res(self.down(x))))
        return ((torch.tanh(y) + 1) / 2)[..., :h, :w]
