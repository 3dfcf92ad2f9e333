"""Tiny randomly initialised models in a temporary store, and a gate to hold the worker."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn

from model_store import ModelStore
from nets.multistyle_net import ConditionalInstanceNorm, MultiStyleNet
from nets.style_net import StyleNet
from nets.superres_net import SuperResNet


def make_store(root: Path, styles: tuple[str, ...] = ("candy", "udnie"),
               factors: tuple[int, ...] = (4, 8)) -> ModelStore:
    """Instance-norm models, so outputs do not depend on what else is in the batch."""
    store = ModelStore(root)
    for i, name in enumerate(styles):
        torch.manual_seed(i)
        store.save(StyleNet(norm="instance"), name=name, task="style", architecture="style",
                   options={"norm": "instance"})
    for factor in factors:
        torch.manual_seed(100 + factor)
        store.save(SuperResNet(factor=factor, norm="instance"), name=f"sr{factor}",
                   task="superres", architecture="superres",
                   options={"factor": factor, "norm": "instance"}, factor=factor)
    return store


MULTISTYLE_OPTIONS = {"upsample": "resize_conv", "padding": "reflect"}


def make_multistyle_store(root: Path, styles: tuple[str, ...] = ("candy", "mosaic", "udnie"),
                          singles: tuple[str, ...] = ("candy", "wave"),
                          name: str = "multistyle") -> ModelStore:
    """A multi-style network `name` holding `styles`, and single-style networks `singles`.

    Random weights, but every style gets its own normalisation scale and shift (far from the
    initial 1 and 0), so that styles and blends give visibly different outputs."""
    store = ModelStore(root)
    torch.manual_seed(7)
    net = MultiStyleNet(list(styles), **MULTISTYLE_OPTIONS)  # type: ignore[arg-type]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.scale.normal_(1.0, 0.5)
                m.shift.normal_(0.0, 0.5)
    store.save(net, name=name, task="style", architecture="multistyle",
               options={"styles": list(styles), **MULTISTYLE_OPTIONS})
    for i, single in enumerate(singles):
        torch.manual_seed(20 + i)
        store.save(StyleNet(norm="instance"), name=single, task="style", architecture="style",
                   options={"norm": "instance"})
    return store


class Gate(nn.Module):
    """Wraps a network: each forward pass waits until `release` is set, and is counted.

    Lets tests hold the batch worker deterministically instead of guessing with sleeps.
    """

    def __init__(self, inner: nn.Module, *, held: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        if not held:
            self.release.set()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, *condition: torch.Tensor) -> torch.Tensor:
        """`condition`: a multi-style network's style weights, passed through."""
        self.batches.append(x.shape[0])
        self.entered.set()
        if not self.release.wait(timeout=60):
            raise TimeoutError("test gate was never released")
        return self.inner(x, *condition)


def hold(services: object, name: str) -> Gate:
    """Put a held Gate in front of the loaded model `name` of a running app's registry."""
    model = services.registry.get(name)  # type: ignore[attr-defined]
    gate = Gate(model.module)
    model.module = gate
    return gate


def own_painting(store: ModelStore, name: str = "own") -> bytes:
    """A PNG of what the store's multi-style network's starting row for a new style `name`
    paints on a probe image: a painting it learns in a few steps (the reload gate passes)."""
    import numpy as np
    from PIL import Image

    from service import quality
    from tests.helpers import images

    net, _ = store.load("multistyle")
    probe = torch.from_numpy(quality.probe_images(192)[1].copy()).permute(2, 0, 1)[None] / 255
    grown = net.with_style(name).eval()
    mix = torch.zeros(1, len(grown.styles))
    mix[0, -1] = 1
    with torch.no_grad():
        own = grown(probe, mix)
    return images.encode(Image.fromarray(
        (own[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
