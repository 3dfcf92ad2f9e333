"""Export a stored network to ONNX with dynamic batch, height and width, and check it.

The torch.export-based exporter (`dynamo=True`) is used: the legacy TorchScript exporter is
deprecated. Both trace Python control flow with the example input, which matters for StyleNet:
its forward pads H and W to a multiple of 4 under `if ph or pw:`. With an example whose sides
are multiples of 4 the branch is dropped and the graph has no padding at all; it still runs in
onnxruntime on other sizes but is wrong near the borders (errors of ~100 on a 0-255 scale).
With an example whose height and width are both *not* multiples of 4 (37x50), the branch is
kept and the pad amounts stay symbolic (`-h % 4`), so one graph is right for every size (a pad
of 0 where the side is already a multiple of 4). `verify` runs both kinds of size to prove it.

A multi-style network (it has `styles`) gets a second input, "mix" (N, S): each image's style
weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXAMPLE_SHAPE = (2, 3, 37, 50)  # batch > 1 and sides not divisible by 4: see the docstring
VERIFY_SIZES = ((32, 32), (37, 50), (61, 45))  # odd sizes take the padding branch
DEFAULT_OPSET = 18


def export_onnx(net: nn.Module, path: Path | str, opset: int = DEFAULT_OPSET) -> Path:
    """Write `net` (eval mode, fp32, CPU) as ONNX: input "image" (N, 3, H, W) in [0, 1] (and
    "mix" (N, S) for a multi-style network)."""
    net = net.float().cpu().eval()
    dynamic = torch.export.Dim.DYNAMIC
    path = Path(path)
    example, names = _example(net, EXAMPLE_SHAPE)
    shapes = ({0: dynamic, 2: dynamic, 3: dynamic}, {0: dynamic})[:len(example)]
    with warnings.catch_warnings():  # MultiStyleNet hands `mix` to its norm layers as attributes
        warnings.filterwarnings("ignore", message="The tensor attributes")
        torch.onnx.export(
            net, example, str(path), dynamo=True, verbose=False, opset_version=opset,
            input_names=names, output_names=["output"], dynamic_shapes=shapes,
            external_data=False)
    return path


def _example(net: nn.Module, shape: tuple[int, ...], generator: torch.Generator | None = None
             ) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """Random inputs of `shape` for `net` (with style weights for a multi-style network)."""
    x = torch.rand(shape, generator=generator)
    styles = getattr(net, "styles", None)
    if not styles:
        return (x,), ["image"]
    mix = torch.softmax(torch.rand(shape[0], len(styles), generator=generator) * 4, 1)
    return (x, mix), ["image", "mix"]


def verify(net: nn.Module, path: Path | str, sizes: Iterable[tuple[int, int]] = VERIFY_SIZES,
           tolerance: float = 1e-3, seed: int = 0) -> float:
    """Max |onnxruntime - torch| on a 0-255 scale over random inputs of `sizes` (input H, W).

    Raises ValueError when a shape differs or the difference exceeds `tolerance`.
    """
    import onnxruntime as ort  # optional dependency: the `onnx` extra

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in sizes:
        inputs, names = _example(net, (2, 3, h, w), g)
        with torch.inference_mode():
            expected = net.float().cpu().eval()(*inputs).numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
        if got.shape != expected.shape:
            raise ValueError(f"{path}: output shape {got.shape} for a {h}x{w} input, "
                             f"torch gives {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()) * 255)
        if worst > tolerance:
            raise ValueError(f"{path}: differs from torch by {worst:.3g} (0-255 scale) on a "
                             f"{h}x{w} input; tolerance {tolerance}")
    return worst
