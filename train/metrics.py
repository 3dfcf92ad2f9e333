"""PSNR and SSIM on the luma channel, the way super-resolution papers (and Table 1) report them.

Conventions of the SRCNN evaluation code the paper follows: images are uint8 RGB, luma is
ITU-R BT.601 Y in [16, 235], a border of `factor` pixels is ignored, and SSIM is Wang et al.
2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB on a 0-255 scale -> float64 (H, W) BT.601 luma in [16, 235]."""
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def shave(a: np.ndarray, border: int) -> np.ndarray:
    """Drop `border` pixels on each side: upsampling cannot be judged where it lacks context."""
    return a[border:a.shape[0] - border, border:a.shape[1] - border] if border else a


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """10 log10(L^2 / MSE) of two equally shaped arrays; inf when they are identical."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The normalised 2-D Gaussian of Wang et al. (MATLAB fspecial('gaussian', 11, 1.5))."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM of two single-channel images over all fully covered window positions."""
    w = torch.from_numpy(gaussian_window(window, sigma))[None, None]
    x = torch.from_numpy(np.asarray(a, np.float64))[None, None]
    y = torch.from_numpy(np.asarray(b, np.float64))[None, None]

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w)  # 'valid': no padding, like MATLAB filter2(w, img, 'valid')

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
         / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return float(s.mean())


def y_psnr_ssim(output: np.ndarray, reference: np.ndarray, border: int) -> tuple[float, float]:
    """PSNR and SSIM of two uint8 (H, W, 3) RGB images on Y, `border` pixels shaved."""
    if output.shape != reference.shape:
        raise ValueError(f"shape mismatch: {output.shape} vs {reference.shape}")
    y_out = shave(rgb_to_y(output), border)
    y_ref = shave(rgb_to_y(reference), border)
    return psnr(y_out, y_ref), ssim(y_out, y_ref)


def gradient_energy(y: np.ndarray) -> float:
    """Mean magnitude of the forward-difference gradient of a luma image: how much edge and
    texture it holds. PSNR and SSIM reward blur; this tells a sharp upsampling from a soft one
    (an output's energy over its HR reference's: bicubic well under 1, a sharp one near 1)."""
    y = np.asarray(y, np.float64)
    dx, dy = np.diff(y, axis=1)[:-1], np.diff(y, axis=0)[:, :-1]
    return float(np.mean(np.hypot(dx, dy)))


def y_sharpness(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """Gradient energy of the output's luma over the reference's, `border` pixels shaved."""
    return (gradient_energy(shave(rgb_to_y(output), border))
            / gradient_energy(shave(rgb_to_y(reference), border)))
