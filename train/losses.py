"""Perceptual losses, exactly as eq. 2-4 and §3.3 of the paper. Pure functions of their inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def feature_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 2: squared Euclidean distance / (C_j H_j W_j), averaged over the batch."""
    return (a.float() - b.float()).pow(2).mean()


def gram(features: torch.Tensor) -> torch.Tensor:
    """Eq. 3: G_j(x)_{c,c'} = sum_hw phi_{h,w,c} phi_{h,w,c'} / (C_j H_j W_j); shape (N, C, C)."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w).float()
    return f @ f.transpose(1, 2) / (c * h * w)


def style_loss(features: Sequence[torch.Tensor], target_grams: Sequence[torch.Tensor]
               ) -> torch.Tensor:
    """Eq. 4 summed over the layer set: squared Frobenius norm of the Gram difference.

    `target_grams` are (1, C, C) or (N, C, C); the loss is averaged over the batch.
    """
    total = features[0].new_zeros((), dtype=torch.float32)
    for f, g in zip(features, target_grams, strict=True):
        total = total + (gram(f) - g).pow(2).sum(dim=(1, 2)).mean()
    return total


def pixel_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """§3.3: normalised squared Euclidean distance ||a - b||^2 / (C H W), batch-averaged."""
    return (a.float() - b.float()).pow(2).mean()


def tv_loss(y: torch.Tensor) -> torch.Tensor:
    """§3.3 total variation (beta = 2 of Mahendran & Vedaldi): sum of squared differences of
    horizontally and vertically neighbouring pixels, per image, averaged over the batch."""
    y = y.float()
    dx = (y[..., :, 1:] - y[..., :, :-1]).pow(2).sum(dim=(1, 2, 3))
    dy = (y[..., 1:, :] - y[..., :-1, :]).pow(2).sum(dim=(1, 2, 3))
    return (dx + dy).mean()
