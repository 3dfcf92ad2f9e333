"""`python -m train superres`: single-image super-resolution for factor 4 or 8 (§4.2)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from nets.superres_net import SuperResNet
from train import data, loop
from train.config import SuperResConfig
from train.degrade import degrade
from train.losses import feature_loss, pixel_loss, tv_loss
from train.style_training import load_loss_network
from train.vgg import LossNetwork


class SuperResObjective(nn.Module):
    """l_feat at relu2_2 (or l_pixel) against the high-resolution patch, plus lambda_TV l_TV."""

    def __init__(self, cfg: SuperResConfig, vgg: LossNetwork | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vgg = vgg

    def forward(self, net: nn.Module, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with torch.no_grad():
            lr = degrade(hr, cfg.factor, cfg.blur_sigma, cfg.degradation)
        y = net(lr)
        if self.vgg is None:
            main = {"pixel": pixel_loss(y, hr)}
        else:
            fy = getattr(self.vgg(y, upto=cfg.feature_layer), cfg.feature_layer)
            with torch.no_grad():
                fhr = getattr(self.vgg(hr, upto=cfg.feature_layer), cfg.feature_layer)
            main = {"feat": feature_loss(fy, fhr)}
        return {**main, "tv": cfg.tv_weight * tv_loss(y)}


CONFIG = SuperResConfig   # its fields are the flags of `python -m train` (train/__main__.py)


def run(cfg: SuperResConfig) -> tuple[nn.Module, loop.Result]:
    """Train, store (on the main process) and return the network with its training result."""
    if cfg.factor not in (4, 8):
        raise ValueError(f"--factor must be 4 or 8, got {cfg.factor}")
    if cfg.loss not in ("feat", "pixel"):
        raise ValueError(f"--loss must be feat or pixel, got {cfg.loss!r}")
    if cfg.patch_size % cfg.factor:
        raise ValueError(f"--patch-size {cfg.patch_size} must be a multiple of {cfg.factor}")
    return loop.train(cfg, partial(build, cfg))


def build(cfg: SuperResConfig, device: torch.device) -> loop.Parts:
    """SuperResNet, its feature (or pixel) objective, and high-resolution patches."""
    options: dict[str, Any] = {"factor": cfg.factor, "norm": cfg.norm, "upsample": cfg.upsample,
               "padding": cfg.padding, "residual": cfg.residual}
    net = SuperResNet(**options)
    vgg = load_loss_network(cfg).to(device) if cfg.loss == "feat" else None
    # Patches come from the photos at their own resolution, as the paper's from COCO.
    images = data.load_folder(cfg.data, min_side=cfg.patch_size)
    return loop.Parts(
        name=cfg.name or f"sr_x{cfg.factor}_{cfg.loss}", net=net,
        objective=SuperResObjective(cfg, vgg),
        sample=lambda g: data.random_crops(images, cfg.batch_size, cfg.patch_size, g),
        data_images=len(images), task="superres", architecture="superres", options=options,
        loss_network=f"{vgg.kind}-imagenet" if vgg else "none", factor=cfg.factor)
