"""Each loss against a value computed by hand on a tiny tensor (eq. 2-4, §3.3)."""

from __future__ import annotations

import pytest
import torch

from train.losses import feature_loss, gram, pixel_loss, style_loss, tv_loss

A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)


def test_feature_loss_is_squared_distance_over_chw():
    assert feature_loss(A, torch.zeros_like(A)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_pixel_loss_is_normalised_squared_distance():
    b = torch.ones(1, 1, 2, 2)
    assert pixel_loss(A, b).item() == pytest.approx((0 + 1 + 4 + 9) / 4)


def test_gram_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, C=2, H=1, W=2)
    expected = torch.tensor([[1 + 4, 3 + 8], [3 + 8, 9 + 16]]) / (2 * 1 * 2)
    assert torch.allclose(gram(f)[0], expected)


def test_style_loss_is_squared_frobenius_summed_over_layers():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    target = torch.zeros(1, 2, 2)
    one_layer = (25 + 121 + 121 + 625) / 16
    assert style_loss([f], [target]).item() == pytest.approx(one_layer)
    assert style_loss([f, f], [target, gram(f)]).item() == pytest.approx(one_layer)


def test_style_loss_averages_over_batch():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    batch = torch.cat([f, torch.zeros_like(f)])
    assert style_loss([batch], [torch.zeros(1, 2, 2)]).item() == pytest.approx(892 / 16 / 2)


def test_total_variation_by_hand():
    y = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    # horizontal: (2-1)^2 + (8-4)^2 = 17; vertical: (4-1)^2 + (8-2)^2 = 45
    assert tv_loss(y).item() == pytest.approx(62)
    assert tv_loss(torch.full((2, 3, 5, 5), 0.3)).item() == 0


def test_losses_do_not_modify_inputs():
    a, b = A.clone(), torch.ones_like(A)
    for fn in (feature_loss, pixel_loss):
        fn(a, b)
    tv_loss(a)
    assert torch.equal(a, A) and torch.equal(b, torch.ones_like(A))
