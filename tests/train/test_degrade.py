"""The SR degradations: PIL's antialiased bicubic (as `train eval` makes its inputs), and the
paper's Gaussian blur (sigma 1) then bicubic downsampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from train.degrade import degrade, gaussian_blur, gaussian_kernel
from train.evaluate import hr_and_lr


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


@pytest.mark.parametrize("kind", ["bicubic", "paper"])
def test_degrade_shapes_and_constant_images(kind):
    hr = torch.full((2, 3, 32, 48), 64 / 255)
    lr = degrade(hr, 4, kind=kind)
    assert lr.shape == (2, 3, 8, 12)
    assert torch.allclose(lr, torch.full_like(lr, 64 / 255), atol=1e-6)
    assert degrade(torch.rand(1, 3, 64, 64), 8, kind=kind).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("kind", ["bicubic", "paper"])
def test_degrade_rejects_sizes_not_multiple_of_factor(kind):
    with pytest.raises(ValueError, match="not a multiple"):
        degrade(torch.rand(1, 3, 30, 32), 4, kind=kind)


@pytest.mark.parametrize("kind", ["bicubic", "paper"])
def test_degrade_removes_high_frequencies(kind):
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2
    lr = degrade(checker.float().expand(1, 3, 32, 32), 4, kind=kind)
    assert lr.std() < 0.01  # the finest pattern cannot survive the downscaling


def test_bicubic_makes_exactly_the_inputs_train_eval_makes(tmp_path):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).resize(
        (50, 42), Image.Resampling.BICUBIC)           # cropped to 48 x 40 by hr_and_lr
    smooth.save(tmp_path / "a.png")
    hr, lr = hr_and_lr(tmp_path / "a.png", 4)
    x = torch.from_numpy(np.asarray(hr).copy()).permute(2, 0, 1)[None].float() / 255
    ours = (degrade(x, 4) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours, np.asarray(lr))       # the very bytes evaluation feeds
    paper = (degrade(x, 4, kind="paper") * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(paper - np.asarray(lr)).max() > 1   # the paper's is another degradation
