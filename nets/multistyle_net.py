"""One network for many styles: conditional instance normalisation (Dumoulin et al. 2017).

The convolutions are shared by every style; each style owns only the scale and shift of each
normalisation layer. Mixing those parameters blends styles (`style=a:0.7,b:0.3`), and requests
for different styles run in one batch, since the style is an input, not a weight.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from nets.layers import ConditionalInstanceNorm, Padding, Upsample
from nets.style_net import StyleTable


class MultiStyleNet(StyleTable):
    """StyleNet's layer table (§3.1) with conditional instance norm.

    forward(x, mix): x (N, 3, H, W) in [0, 1]; mix (N, S) style weights, rows summing to 1
    (a one-hot row is one style). Returns (N, 3, H, W) in [0, 1].
    """

    def __init__(self, styles: list[str], upsample: Upsample = "resize_conv",
                 padding: Padding = "reflect") -> None:
        if not styles or len(set(styles)) != len(styles):
            raise ValueError(f"styles must be distinct names, got {styles}")
        norm = functools.partial(ConditionalInstanceNorm, num_styles=len(styles))
        super().__init__(norm, upsample, padding)
        self.styles = list(styles)
        self._upsample, self._padding = upsample, padding

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

    def with_style(self, name: str) -> MultiStyleNet:
        """A copy of this network holding one more style, `name`, last. Its scale and shift
        start as the mean of the others'; every other weight is copied. Training only its rows
        then learns a new painting (Dumoulin et al. 2017, §4.3)."""
        if name in self.styles:
            raise ValueError(f"style {name!r} is already one of {self.styles}")
        first = next(m for m in self.modules() if isinstance(m, ConditionalInstanceNorm))
        upsample, padding = self.options()
        grown = MultiStyleNet([*self.styles, name], upsample, padding).to(first.scale.device)
        state = self.state_dict()
        for key, value in grown.state_dict().items():
            old = state[key]
            if old.shape != value.shape:   # a scale or shift: (S, C) -> (S + 1, C)
                old = torch.cat([old, old.mean(0, keepdim=True)])
            value.copy_(old)
        return grown

    def without_style(self, name: str) -> MultiStyleNet:
        """A copy of this network without the style `name` (its rows of scale and shift);
        every other style computes as before."""
        if name not in self.styles or len(self.styles) == 1:
            raise ValueError(f"style {name!r} is not one of {self.styles} that can be dropped")
        index = self.styles.index(name)
        first = next(m for m in self.modules() if isinstance(m, ConditionalInstanceNorm))
        kept = MultiStyleNet([s for s in self.styles if s != name], *self.options()).to(
            first.scale.device)
        state = self.state_dict()
        for key, value in kept.state_dict().items():
            old = state[key]
            if old.shape != value.shape:   # a scale or shift: (S, C) -> (S - 1, C)
                old = torch.cat([old[:index], old[index + 1:]])
            value.copy_(old)
        return kept

    def options(self) -> tuple[Upsample, Padding]:
        """The upsample and padding this network was built with."""
        return self._upsample, self._padding

    def one_hot(self, indices: torch.Tensor) -> torch.Tensor:
        return F.one_hot(indices, len(self.styles)).float()

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        if mix.shape != (x.shape[0], len(self.styles)):
            raise ValueError(f"mix must be ({x.shape[0]}, {len(self.styles)}), "
                             f"got {tuple(mix.shape)}")
        return self.transform(x, mix)


__all__ = ["ConditionalInstanceNorm", "MultiStyleNet"]
