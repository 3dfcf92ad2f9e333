"""How a training pair's low-resolution input is made from its high-resolution patch.

Two degradations (`python -m train superres --degradation`):
- `bicubic` (the default): PIL's antialiased bicubic downscaling of the 8-bit image, exactly
  as `train eval` makes the inputs of Set5/Set14 (`train/evaluate.py`, like MATLAB's
  `imresize`) and as a user who shrinks a photo does. A model is trained on what it is
  evaluated and served on: trained on the paper's degradation, `sr_x4_pixel` lost 0.4 dB on
  Set5 to the mismatch alone.
- `paper` (§4.2): a Gaussian blur of sigma 1, then bicubic downsampling without antialiasing.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Degradation = Literal["bicubic", "paper"]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D kernel of radius ceil(3 sigma)."""
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x.pow(2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Separable blur of (N, C, H, W) with reflected borders."""
    k = gaussian_kernel(sigma).to(x)
    r = k.numel() // 2
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pil_bicubic(hr: torch.Tensor, factor: int) -> torch.Tensor:
    """Each image as 8 bits through PIL's antialiased bicubic resize, as `train eval` does."""
    out = []
    for image in (hr.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu():
        h, w = image.shape[:2]
        small = Image.fromarray(image.numpy()).resize((w // factor, h // factor),
                                                      Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(small).copy()))
    return (torch.stack(out).permute(0, 3, 1, 2).float() / 255).to(hr.device)


def degrade(hr: torch.Tensor, factor: int, sigma: float = 1.0,
            kind: Degradation = "bicubic") -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, H/f, W/f); H and W must be multiples of f. `sigma`:
    the blur of the `paper` degradation."""
    h, w = hr.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image {h}x{w} is not a multiple of the factor {factor}")
    if kind == "bicubic":
        return pil_bicubic(hr, factor)
    lr = F.interpolate(gaussian_blur(hr, sigma), size=(h // factor, w // factor),
                       mode="bicubic", align_corners=False)
    return lr.clamp(0, 1)
