"""Name -> network builder: the one place the model store looks architectures up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from nets.multistyle_net import MultiStyleNet
from nets.style_net import StyleNet
from nets.superres_net import SuperResNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "style": StyleNet,
    "superres": SuperResNet,
    "multistyle": MultiStyleNet,
}


def build(architecture: str, options: dict[str, Any]) -> nn.Module:
    """Build a network from its registered name and constructor options (as in a manifest)."""
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; "
                         f"known: {', '.join(sorted(ARCHITECTURES))}") from None
    return builder(**options)
