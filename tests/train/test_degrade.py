"""The paper's SR degradation: Gaussian blur (sigma 1) then bicubic downsampling."""

from __future__ import annotations

import math

import pytest
import torch

from train.degrade import degrade, gaussian_blur, gaussian_kernel


def test_kernel_is_normalised_gaussian():
    k = gaussian_kernel(1.0)
    assert k.numel() == 7 and k.sum().item() == pytest.approx(1)
    raw = [math.exp(-(x**2) / 2) for x in range(-3, 4)]
    assert k.tolist() == pytest.approx([v / sum(raw) for v in raw])


def test_blur_of_an_impulse_is_the_2d_kernel():
    x = torch.zeros(1, 1, 15, 15)
    x[..., 7, 7] = 1
    k = gaussian_kernel(1.0)
    assert torch.allclose(gaussian_blur(x)[0, 0, 4:11, 4:11], k[:, None] * k[None, :], atol=1e-7)


def test_degrade_shapes_and_constant_images():
    hr = torch.full((2, 3, 32, 48), 0.25)
    lr = degrade(hr, 4)
    assert lr.shape == (2, 3, 8, 12)
    assert torch.allclose(lr, torch.full_like(lr, 0.25), atol=1e-6)
    assert degrade(torch.rand(1, 3, 64, 64), 8).shape == (1, 3, 8, 8)


def test_degrade_rejects_sizes_not_multiple_of_factor():
    with pytest.raises(ValueError, match="not a multiple"):
        degrade(torch.rand(1, 3, 30, 32), 4)


def test_degrade_removes_high_frequencies():
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2
    lr = degrade(checker.float().expand(1, 3, 32, 32), 4)
    assert lr.std() < 0.01  # the finest pattern cannot survive blur + subsampling
