"""Exact rewrites of the transform networks that run faster: same function, cheaper layers.

Two layers of the shipped networks use the CPU badly (measured with `python -m bench model`):

* resize-convolution (nearest x2 upsampling, then a 3x3 convolution) runs its convolution at the
  high resolution, where most of its inputs are copies of each other. `SubPixelUpConv` computes
  the same outputs from the low-resolution map: each of the four output phases (row and column
  parity) sees only 2x2 distinct input pixels, so it is a 2x2 convolution with summed weights,
  and `pixel_shuffle` interleaves the four phases. 16/36 of the multiply-adds, and the
  convolutions run at the size where they are efficient.
* the output convolution (9x9, 3 output channels) leaves the vector units mostly empty: three
  output channels cannot fill them. `ColumnConv` splits it into 9x1 columns, one output channel
  per (colour, column offset) = 27 channels, and sums the columns shifted into place. The same
  multiply-adds, in a shape the convolution kernels handle well.

Both are exact up to float rounding (~1e-4 of a grey level), not approximations: the weights are
re-arranged, never re-trained. The rewritten module also exports to ONNX with dynamic shapes
(only constant slice bounds), which is how the CPU service runs it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from train.layers import Conv


def _pad_mode(conv: nn.Conv2d) -> str:
    return "reflect" if conv.padding_mode == "reflect" else "constant"


class SubPixelUpConv(nn.Module):
    """conv3x3(pad(upsample_nearest_x2(x))) computed on x: four 2x2 convolutions + pixel_shuffle.

    Output pixel (2i+a, 2j+b) reads upsampled rows 2i+a-1..2i+a+1, i.e. input rows
    floor((2i+a+d)/2) for d in -1, 0, 1: two distinct rows per parity a. Reflect padding of the
    upsampled map by one equals replicate padding of the input by one (row -1 is a copy of
    row 0 either way); zero padding stays zero padding.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
            raise ValueError("SubPixelUpConv rewrites 3x3, stride 1, same-padded convolutions")
        w = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[0])
        self.mode = "replicate" if conv.padding_mode == "reflect" else "constant"
        # phase (a, b): 2x2 kernel over padded input rows i+a, i+a+1 and columns j+b, j+b+1
        weights = []
        for a in (0, 1):
            for b in (0, 1):
                k = w.new_zeros(w.shape[0], w.shape[1], 2, 2)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        k[:, :, (a + dy) // 2 + 1 - a, (b + dx) // 2 + 1 - b] += w[:, :, dy + 1,
                                                                                   dx + 1]
                weights.append(k)
        # (4*O, I, 2, 2), phase-major: 4-D, so that .to(memory_format=...) applies to it
        self.weight = nn.Parameter(torch.cat(weights), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        self.out_channels = w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x, (1, 1, 1, 1), mode=self.mode)
        # Slice bounds are constants (no shape arithmetic), so ONNX export stays shape-generic.
        o = self.out_channels
        phases = [F.conv2d(xp[..., a:(a - 1) or None, b:(b - 1) or None],
                           self.weight[(2 * a + b) * o:(2 * a + b + 1) * o], self.bias)
                  for a in (0, 1) for b in (0, 1)]
        y = torch.stack(phases, 2).flatten(1, 2)   # (N, O*4, H, W), channel o*4 + 2a + b
        return F.pixel_shuffle(y, 2)


class ColumnConv(nn.Module):
    """A kxk convolution with few output channels as a kx1 convolution to (channel, column)
    outputs, summed shifted: y[c, :, j] = sum_dx z[c, dx, :, j + dx]."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or conv.stride != (1, 1) or conv.padding != (k // 2,) * 2:
            raise ValueError("ColumnConv rewrites square, stride 1, same-padded convolutions")
        w = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[0])
        self.k, self.out_channels = k, w.shape[0]
        self.mode = _pad_mode(conv)
        columns = w.permute(0, 3, 1, 2).reshape(w.shape[0] * k, w.shape[1], k, 1)
        spare = -columns.shape[0] % 16   # whole vector registers of outputs: faster, unused
        columns = torch.cat([columns, columns.new_zeros(spare, *columns.shape[1:])])
        self.weight = nn.Parameter(columns, requires_grad=False)
        self.bias = nn.Parameter(bias.view(1, -1, 1, 1).clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, k = self.k // 2, self.k
        z = F.conv2d(F.pad(x, (p, p, p, p), mode=self.mode), self.weight)
        z = z[:, : self.out_channels * k].unflatten(1, (self.out_channels, k))
        y = self.bias + z[:, :, 0, :, : -2 * p]
        for dx in range(1, k):
            y = y + z[:, :, dx, :, dx:(dx - 2 * p) or None]
        return y


def rewrite(net: nn.Module) -> nn.Module:
    """A copy of `net` with every resize-convolution and few-output large-kernel convolution
    replaced by its faster equivalent; other layers are shared in structure, copied in memory."""
    net = copy.deepcopy(net)
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            up, conv = seq[i], seq[i + 1]
            if (isinstance(up, nn.Upsample) and up.mode == "nearest"
                    and up.scale_factor in (2, 2.0, (2.0, 2.0)) and isinstance(conv, Conv)
                    and conv.conv.kernel_size == (3, 3) and conv.conv.stride == (1, 1)):
                seq[i] = nn.Identity()
                seq[i + 1] = SubPixelUpConv(conv.conv)
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            c = child.conv if isinstance(child, Conv) else None
            if (c is not None and c.kernel_size[0] >= 5 and c.out_channels <= 4
                    and c.stride == (1, 1) and c.kernel_size[0] == c.kernel_size[1]):
                setattr(parent, name, ColumnConv(c))
    return net.eval()
