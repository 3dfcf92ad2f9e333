"""A stand-in device (`SERVICE_DEVICE=stub`): the whole service but the forward pass, on a CPU.

Why: the service exists to feed a GPU, and whether its front end (HTTP, decode, admission,
batching, encode, worker processes) keeps up with one can be measured without one. A forward
pass of n images is a wait as long as a recorded device took for such a batch (`StubCost`,
e.g. the H200's of `bench/results/model-cuda-h200.json`), during which the GIL is free, as it
is while a GPU computes. Every process of one pod shares the one stub device through a lock on
the cost file, as they would share one GPU. The output is the input (super-resolution: each
pixel repeated), so the encoder has real work. `python -m bench service --device stub` uses it.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service import policy as policies
from service.activations import ActivationSizes
from service.registry import LoadedModel, Registry

STUB_PATH = "stub"   # the execution path's name in /v1/models and the metrics


@dataclass(frozen=True)
class StubCost:
    """Device milliseconds of a batch: recorded at some batch sizes for `side` x `side`
    outputs, linear between them (and at the last per-image cost beyond), proportional to the
    output pixels."""

    side: int
    batch_ms: dict[int, float]

    @classmethod
    def read(cls, path: Path) -> StubCost:
        """A JSON file {"side": 256, "batch_ms": {"1": 0.94, "8": 3.91, ...}}."""
        data = json.loads(path.read_text())
        return cls(int(data["side"]), {int(b): float(ms) for b, ms in data["batch_ms"].items()})

    def seconds(self, batch: int, pixels: int) -> float:
        sizes = sorted(self.batch_ms)
        i = bisect.bisect_left(sizes, batch)
        if i < len(sizes) and sizes[i] == batch:
            ms = self.batch_ms[batch]
        elif i == 0:
            ms = self.batch_ms[sizes[0]] * batch / sizes[0]
        elif i == len(sizes):
            ms = self.batch_ms[sizes[-1]] * batch / sizes[-1]
        else:
            lo, hi = sizes[i - 1], sizes[i]
            ms = self.batch_ms[lo] + (self.batch_ms[hi] - self.batch_ms[lo]) * (
                (batch - lo) / (hi - lo))
        return ms / 1000 * pixels / self.side ** 2


class StubModel(LoadedModel):
    """A loaded model whose forward pass is the stub device's wait."""

    cost: StubCost
    device_lock: Path

    def run(self, images: Sequence[np.ndarray],
            conditions: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        self._mix(conditions, len(images))     # the same checks as a real forward pass
        h, w = images[0].shape[:2]
        if any(image.shape != images[0].shape for image in images):
            raise ValueError("a batch must hold images of one shape")
        f = self.factor
        wait_s = self.cost.seconds(len(images), h * w * f * f)
        with self.device_lock.open("rb") as lock:   # one device for every process and lane
            fcntl.flock(lock, fcntl.LOCK_EX)
            time.sleep(wait_s)
        if f == 1:
            return list(images)
        return [image.repeat(f, axis=0).repeat(f, axis=1) for image in images]


class StubRegistry(Registry):
    """The store's models with the stub device in place of their forward pass. The networks
    are loaded on the CPU all the same: the activation bound and the tiling read them."""

    def __init__(self, store_root: Path | str, names: Sequence[str], cost_file: Path, *,
                 max_batch_size: int, max_activation_bytes: int | None = None) -> None:
        super().__init__(store_root, names, "cpu", "float32", policy="fixed",
                         max_batch_size=max_batch_size, lanes=1,
                         max_activation_bytes=max_activation_bytes)
        self.cost_file = cost_file
        self.cost = StubCost.read(cost_file)

    def _load(self, name: str, environment: dict[str, Any]) -> LoadedModel:
        module, manifest = self.store.load(name)
        model = StubModel(name, manifest, module, torch.device("cpu"), torch.float32,
                          policies.fixed_policy(STUB_PATH, self.max_batch_size))
        model.cost, model.device_lock = self.cost, self.cost_file
        model.activations = ActivationSizes(module, len(model.styles))
        return model
