"""Export a network to ONNX with dynamic batch, height and width, and check it: the one exporter,
used by `python -m model_store export-onnx` and by the service's ONNX Runtime and OpenVINO paths.

torch has two exporters. The TorchScript-based one takes about a second, the torch.export-based
one (`dynamo=True`) five to fifteen; the service exports at every start, so the first is tried
first and the second, which will replace it, is the fallback. Both trace Python control flow with
the example input, which matters for StyleNet: its forward pads H and W to a multiple of 4 under
`if ph or pw:`. With an example whose sides are multiples of 4 the branch is dropped and the graph
has no padding at all; it still runs on other sizes but is wrong near the borders (errors of ~100
on a 0-255 scale). With an example whose height and width are both *not* multiples of 4 (37x50),
the branch is kept and the pad amounts stay symbolic (`-h % 4`), so one graph is right for every
size (a pad of 0 where the side is already a multiple of 4). `verify` runs both kinds of size.

A multi-style network (it has `styles`) gets a second input, "mix" (N, S): each image's style
weights, the second argument of its forward.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger("model_store.onnx_export")

EXAMPLE_SHAPE = (2, 3, 37, 50)  # batch > 1 and sides not divisible by 4: see the docstring
VERIFY_SIZES = ((32, 32), (37, 50), (61, 45))  # odd sizes take the padding branch
DEFAULT_OPSET = 18


def onnx_bytes(net: nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """`net` as ONNX (float32, CPU): input "image" (N, 3, H, W) in [0, 1] (and "mix" (N, S)
    for a multi-style network), output "output"."""
    net = copy.deepcopy(net).float().cpu().eval()
    example, names = _example(net, EXAMPLE_SHAPE)
    dims = {0: "batch", 2: "height", 3: "width"}
    axes = {"image": dims, "mix": {0: "batch"}, "output": dims}
    dynamic = torch.export.Dim.DYNAMIC
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        try:
            with warnings.catch_warnings():   # the TorchScript exporter's deprecation notice
                warnings.simplefilter("ignore")
                torch.onnx.export(net, example, str(path), input_names=names,
                                  output_names=["output"], dynamo=False, opset_version=opset,
                                  dynamic_axes={n: axes[n] for n in [*names, "output"]})
        except Exception as e:  # the TorchScript exporter may go away in a later torch
            log.info("TorchScript ONNX export failed (%s); using torch.export", e)
            torch.onnx.export(net, example, str(path), dynamo=True, verbose=False,
                              opset_version=opset, input_names=names, output_names=["output"],
                              dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},
                                              {0: dynamic})[:len(example)],
                              external_data=False)
        return path.read_bytes()


def export_onnx(net: nn.Module, path: Path | str, opset: int = DEFAULT_OPSET) -> Path:
    """Write `net` as ONNX (`onnx_bytes`) to `path`."""
    path = Path(path)
    path.write_bytes(onnx_bytes(net, opset))
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
