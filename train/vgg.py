"""The frozen loss network φ (§3): ImageNet VGG up to relu4_3, returning named activations."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from train.vgg_weights import CONVS


class Taps(NamedTuple):
    """The activations the paper's losses read (§3.2 and §4.1)."""

    relu1_2: torch.Tensor
    relu2_2: torch.Tensor
    relu3_3: torch.Tensor
    relu4_3: torch.Tensor


TAP_NAMES = Taps._fields


class LossNetwork(nn.Module):
    """Input RGB in [0, 1]; each network's own normalisation is applied inside.

    VGG-19 has a fourth conv in blocks 3 and 4; the taps keep the paper's names (relu3_3 is
    still the third conv of block 3), so only the depth between taps differs from VGG-16.
    """

    def __init__(self, kind: str, state: dict[str, torch.Tensor], last: str = "relu4_3") -> None:
        super().__init__()
        if kind not in CONVS:
            raise ValueError(f"unknown VGG kind {kind!r}")
        self.kind = kind
        last_block, last_conv = int(last[4]), int(last[6])
        self.layers = [(b, c) for b, c in CONVS[kind] if (b, c) <= (last_block, last_conv)]
        self.convs = nn.ModuleList(
            nn.Conv2d(state[f"conv{i}.weight"].shape[1], state[f"conv{i}.weight"].shape[0], 3,
                      padding=1) for i in range(len(self.layers)))
        self.convs.load_state_dict({k.removeprefix("conv"): v for k, v in state.items()
                                    if int(k.split(".")[0][4:]) < len(self.layers)})
        self.requires_grad_(False)
        self.eval()
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        if kind == "vgg19":  # Keras/Caffe convention: BGR, 0-255, mean subtracted
            self.register_buffer("mean", torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor(255.0))
        else:                # torchvision convention: RGB, 0-1, mean/std normalised
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("scale", 1 / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "vgg19":
            return x.flip(1) * self.scale - self.mean
        return (x - self.mean) * self.scale

    def forward(self, x: torch.Tensor, upto: str = "relu4_3") -> Taps:
        """Activations at every tap; taps past `upto` are not computed and are None."""
        h = self.normalise(x)
        taps: dict[str, torch.Tensor] = {}
        for conv, (b, c) in zip(self.convs, self.layers, strict=True):
            if c == 1 and b > 1:
                h = F.max_pool2d(h, 2)
            h = F.relu(conv(h))
            taps[f"relu{b}_{c}"] = h
            if f"relu{b}_{c}" == upto:
                break
        return Taps(*(taps.get(name) for name in TAP_NAMES))  # type: ignore[arg-type]

    def train(self, mode: bool = True) -> LossNetwork:
        return super().train(False)  # always frozen, even inside a model put in train mode

