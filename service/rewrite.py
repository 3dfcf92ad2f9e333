"""Exact rewrites of the transform networks that run faster: same function, cheaper layers.

Two layers of the shipped networks use the CPU badly (measured with `python -m bench model`):

* resize-convolution (nearest x2 upsampling, then a 3x3 convolution) runs its convolution at the
  high resolution, where most of its inputs are copies of each other. `TransposedUpConv`
  computes the same outputs from the low-resolution map with one stride-2 transposed 4x4
  convolution: each output pixel sees only 2x2 distinct input pixels, so 16/36 of the
  multiply-adds. (Four 2x2 convolutions, one per output phase, interleaved by `pixel_shuffle`,
  compute the same; measured 1.1-1.25x slower under OpenVINO and ONNX Runtime, for the copies.)
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

from nets.layers import Conv


def _pad_mode(conv: nn.Conv2d) -> str:
    return "reflect" if conv.padding_mode == "reflect" else "constant"


class TransposedUpConv(nn.Module):
    """conv3x3(pad(upsample_nearest_x2(x))) as one transposed convolution of x, stride 2.

    Along each axis, output pixel 2i+a reads upsampled pixels 2i+a-1 .. 2i+a+1, which are input
    pixels i-1, i, i (a = 0) or i, i, i+1 (a = 1). So the taps (w0, w1, w2) act on two distinct
    pixels with summed weights: (w0, w1+w2) on (i-1, i) and (w0+w1, w2) on (i, i+1). A stride-2
    transposed convolution with the 4-tap kernel (w2, w1+w2, w0+w1, w0) computes both phases
    (`_TAPS` applies this per axis). Reflect padding of the upsampled map by one equals
    replicate padding of the input by one (pixel -1 is a copy of pixel 0 either way); zero
    padding stays zero padding; the transposed convolution's padding of 3 then crops its output
    to exactly 2H x 2W.
    """

    # 4-tap kernel index k <- 3x3 kernel index d: k0 = w2, k1 = w1+w2, k2 = w0+w1, k3 = w0
    _TAPS = torch.tensor([[0., 0., 1.], [0., 1., 1.], [1., 1., 0.], [1., 0., 0.]])

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
            raise ValueError("TransposedUpConv rewrites 3x3, stride 1, same-padded convolutions")
        w = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[0])
        self.mode = "replicate" if conv.padding_mode == "reflect" else "constant"
        taps = self._TAPS.to(w)
        kernel = torch.einsum("ky,oiyx,lx->iokl", taps, w, taps)   # (in, out, 4, 4)
        self.weight = nn.Parameter(kernel.contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode=self.mode), self.weight,
                                  self.bias, stride=2, padding=3)


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
                seq[i + 1] = TransposedUpConv(conv.conv)
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            c = child.conv if isinstance(child, Conv) else None
            if (c is not None and c.kernel_size[0] >= 5 and c.out_channels <= 4
                    and c.stride == (1, 1) and c.kernel_size[0] == c.kernel_size[1]):
                setattr(parent, name, ColumnConv(c))
    return net.eval()
