"""Tiny randomly initialised models in a temporary store, and a gate to hold the worker."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn

from model_store import ModelStore
from train.style_net import StyleNet
from train.superres_net import SuperResNet


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        self.entered.set()
        if not self.release.wait(timeout=60):
            raise TimeoutError("test gate was never released")
        return self.inner(x)


def hold(services: object, name: str) -> Gate:
    """Put a held Gate in front of the loaded model `name` of a running app's registry."""
    model = services.registry.get(name)  # type: ignore[attr-defined]
    gate = Gate(model.module)
    model.module = gate
    return gate
