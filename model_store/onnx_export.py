"""Export a stored network to ONNX with dynamic batch, height and width, and check it.

The torch.export-based exporter (`dynamo=True`) is used: the legacy TorchScript exporter is
deprecated. Both trace Python control flow with the example input, which matters for StyleNet:
its forward pads H and W to a multiple of 4 under `if ph or pw:`. With an example whose sides
are multiples of 4 the branch is dropped and the graph has no padding at all; it still runs in
onnxruntime on other sizes but is wrong near the borders (errors of ~100 on a 0-255 scale).
With an example whose height and width are both *not* multiples of 4 (37x50), the branch is
kept and the pad amounts stay symbolic (`-h % 4`), so one graph is right for every size (a pad
of 0 where the side is already a multiple of 4). `verify` runs both kinds of size to prove it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXAMPLE_SHAPE = (2, 3, 37, 50)  # batch > 1 and sides not divisible by 4: see the docstring
VERIFY_SIZES = ((32, 32), (37, 50), (61, 45))  # odd sizes take the padding branch
DEFAULT_OPSET = 18


def export_onnx(net: nn.Module, path: Path | str, opset: int = DEFAULT_OPSET) -> Path:
    """Write `net` (eval mode, fp32, CPU) as ONNX: input "image" (N, 3, H, W) in [0, 1]."""
    net = net.float().cpu().eval()
    dynamic = torch.export.Dim.DYNAMIC
    path = Path(path)
    torch.onnx.export(
        net, (torch.rand(EXAMPLE_SHAPE),), str(path), dynamo=True, verbose=False,
        opset_version=opset, input_names=["image"], output_names=["output"],
        dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},), external_data=False)
    return path


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
        x = torch.rand(1, 3, h, w, generator=g)
        with torch.inference_mode():
            expected = net.float().cpu().eval()(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        if got.shape != expected.shape:
            raise ValueError(f"{path}: output shape {got.shape} for a {h}x{w} input, "
                             f"torch gives {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()) * 255)
        if worst > tolerance:
            raise ValueError(f"{path}: differs from torch by {worst:.3g} (0-255 scale) on a "
                             f"{h}x{w} input; tolerance {tolerance}")
    return worst
