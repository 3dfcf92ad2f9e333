"""Where the networks run: the device named by a setting, and whether the CPU does bfloat16.

Training and serving both choose from these, so they agree on what `auto` means."""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(setting: str) -> torch.device:
    """`auto`: the GPU when there is one. Under torchrun, `cuda` is this process's GPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but CUDA is not available")
        if "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(setting)


def native_bf16() -> bool:
    """A CPU whose vector units do bfloat16 (AVX512-BF16 or AMX); elsewhere oneDNN emulates it
    (a training step took 20x longer in bf16 on an AVX2 Xeon)."""
    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
