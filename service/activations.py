"""The largest intermediate tensor of a forward pass, by shape propagation on the meta device.

Why: a batch must be bounded by its largest tensor, not only by its input pixels. CUDA kernels
index a tensor with 32-bit integers, so one of 2^31 elements or more fails outright ("input
tensor must fit into 32-bit index math"), and that is no out-of-memory error the batcher would
split: eight 256x256 requests to `sr_x8` make an 8 x 64 x 2048 x 2048 = 2^31-element activation.

How: on the meta device a forward pass computes every shape and allocates nothing, but it
still takes ~0.1 s, too long for the batcher's loop at every new image size. The networks are
fully convolutional, so at sides that are multiples of their total stride every tensor's size
is proportional to the input's pixels. The largest tensor per input pixel is measured once, at
two such sizes, and a request's sides are rounded up to a multiple of `ALIGN` before scaling:
never less than the real size (a larger input never makes a smaller tensor).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

INDEX_LIMIT = 2**31 - 1   # elements a tensor may have under 32-bit index math
# A CPU forward pass holds about this many tensors the size of its largest intermediate at once
# (a layer's input and output, a residual block's skip): a 2048x2048 image on udnie raised the
# server's peak RSS by 1.7 GiB, 3.4x its 512 MiB largest tensor (bench reliability oversized).
CPU_PASS_TENSORS = 3.5
ALIGN = 64                # a multiple of every network's total stride (4 for style, 1 for SR)
_PROBES = ((ALIGN, ALIGN), (2 * ALIGN, 3 * ALIGN))


class ActivationSizes:
    """The elements of the largest tensor that a forward pass of one (3, height, width) image
    makes in `module` (any output of any of its layers). `styles`: a multi-style network's
    number of styles (its second input)."""

    def __init__(self, module: nn.Module, styles: int = 0) -> None:
        meta = copy.deepcopy(module).to("meta").eval()
        dtype = next(meta.parameters()).dtype
        largest = [0]

        def record(layer: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            if isinstance(output, torch.Tensor):
                largest[0] = max(largest[0], output.numel())

        for layer in meta.modules():
            layer.register_forward_hook(record)
        mix = (torch.empty(1, styles, device="meta"),) if styles else ()
        per_pixel = []
        with torch.no_grad():
            for height, width in _PROBES:
                largest[0] = 0
                meta(torch.empty(1, 3, height, width, device="meta", dtype=dtype), *mix)
                per_pixel.append(largest[0] / (height * width))
        self.per_pixel = max(per_pixel)

    def per_image(self, height: int, width: int) -> int:
        return math.ceil(self.per_pixel * _align(height) * _align(width))


def _align(side: int) -> int:
    return -(-side // ALIGN) * ALIGN


def batch_limit(per_image: int, itemsize: int, budget_bytes: int | None) -> int:
    """The most images (at least one) whose largest tensor, `per_image` elements of `itemsize`
    bytes each per image, stays within 32-bit index math and `budget_bytes`."""
    bound = INDEX_LIMIT if budget_bytes is None else min(INDEX_LIMIT, budget_bytes // itemsize)
    return max(1, bound // per_image)
