"""The paper's low-resolution inputs (§4.2): Gaussian blur, sigma 1, then bicubic downsampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def degrade(hr: torch.Tensor, factor: int, sigma: float = 1.0) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, H/f, W/f); H and W must be multiples of f."""
    h, w = hr.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image {h}x{w} is not a multiple of the factor {factor}")
    lr = F.interpolate(gaussian_blur(hr, sigma), size=(h // factor, w // factor),
                       mode="bicubic", align_corners=False)
    return lr.clamp(0, 1)
