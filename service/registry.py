"""The loaded models: every model of the store, on the device, warmed up, ready to run.

Knows nothing of HTTP, caching or metrics: it turns uint8 pixel arrays into uint8 pixel arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_store import Manifest, ModelStore

log = logging.getLogger("service.registry")

MIN_SIDE_PX = 16  # smaller inputs are edge-padded: reflect padding needs a few pixels per side
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """auto: float16 on CUDA (the networks tolerate it well), float32 on the CPU."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError)


@dataclass(eq=False)
class LoadedModel:
    name: str
    manifest: Manifest
    module: nn.Module
    device: torch.device
    dtype: torch.dtype

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def factor(self) -> int:
        """Output side / input side: 1 for style transfer."""
        return (self.manifest.factor or 1) if self.task == "superres" else 1

    @property
    def digest(self) -> str:
        return self.manifest.sha256

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def run(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H, W, 3) uint8 arrays of one shape -> outputs, (fH, fW, 3) uint8. Thread-safe enough
        for one worker per device, which is how the batcher calls it."""
        x = torch.from_numpy(np.stack(images))                 # (N, H, W, 3) uint8
        try:
            with torch.inference_mode():
                x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                x = (x.to(self.dtype) / 255).contiguous(memory_format=torch.channels_last)
                y = self.module(x)
                y = (y.float().clamp(0, 1) * 255).round().to(torch.uint8)
                y = y.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise
        return list(y)


class Registry:
    """Loads the store's models (all, or `names`) onto one device."""

    def __init__(self, store_root: Path | str, names: Sequence[str] = (), device: str = "auto",
                 dtype: str = "auto") -> None:
        self.store = ModelStore(store_root)
        self.wanted = list(names)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._models: dict[str, LoadedModel] = {}

    def load_all(self) -> list[LoadedModel]:
        """Load, convert and warm up every model (blocking; call from a thread)."""
        names = self.wanted or self.store.names()
        for name in names:
            started = time.monotonic()
            module, manifest = self.store.load(name)
            module = module.to(self.device, self.dtype, memory_format=torch.channels_last).eval()
            model = LoadedModel(name, manifest, module, self.device, self.dtype)
            side = 4 * MIN_SIDE_PX if model.task == "style" else MIN_SIDE_PX
            model.run([np.zeros((side, side, 3), np.uint8)])   # warm-up: kernels, allocator
            self._models[name] = model
            log.info("loaded model %s (%s, factor %s) on %s/%s in %.2fs", name, model.task,
                     model.factor, self.device, model.dtype_name, time.monotonic() - started)
        return self.models()

    def models(self) -> list[LoadedModel]:
        return [self._models[n] for n in sorted(self._models)]

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def styles(self) -> list[str]:
        return [m.name for m in self.models() if m.task == "style"]

    def superres(self, factor: int) -> list[LoadedModel]:
        """The super-resolution models for `factor`, by name."""
        return [m for m in self.models() if m.task == "superres" and m.factor == factor]

    def factors(self) -> list[int]:
        return sorted({m.factor for m in self.models() if m.task == "superres"})

    def gpu_memory_bytes(self) -> float:
        if self.device.type != "cuda":
            return 0.0
        return float(torch.cuda.memory_allocated(self.device))
