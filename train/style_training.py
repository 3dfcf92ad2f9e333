"""`python -m train style`: a feed-forward network for one style painting (§3.2, §4.1)."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nets.device import resolve_device
from nets.style_net import StyleNet
from train import data, loop
from train.config import StyleConfig
from train.losses import feature_loss, gram, style_loss, tv_loss
from train.vgg import LossNetwork
from train.vgg_weights import resolve


def load_loss_network(cfg) -> LossNetwork:
    kind, state = resolve(weights=Path(cfg.vgg_weights) if cfg.vgg_weights else None)
    return LossNetwork(kind, state)


def load_style_image(path: str, longer_side: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], its longer side resized to `longer_side`."""
    im = data.load_rgb(Path(path)).float().unsqueeze(0) / 255
    h, w = im.shape[-2:]
    s = longer_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return F.interpolate(im, size=size, mode="bicubic", antialias=True, align_corners=False
                         ).clamp(0, 1)


class StyleObjective(nn.Module):
    """lambda_c l_feat(relu2_2) + lambda_s l_style(relu1_2..relu4_3) + lambda_TV l_TV."""

    def __init__(self, vgg: LossNetwork, style: torch.Tensor, cfg: StyleConfig) -> None:
        super().__init__()
        if cfg.style_weight == "auto":
            raise ValueError("resolve --style-weight auto before building the objective")
        self.vgg = vgg
        self.cfg = cfg
        self.style_weight = cfg.style_weight
        self.style_layers = cfg.style_layers.split(",")
        with torch.no_grad():
            taps = vgg(style)
            self.targets = [gram(getattr(taps, name)) for name in self.style_layers]

    def forward(self, net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = net(x)
        fy = self.vgg(y)
        with torch.no_grad():
            fx = self.vgg(x, upto=self.cfg.content_layer)
        cfg = self.cfg
        content = feature_loss(getattr(fy, cfg.content_layer), getattr(fx, cfg.content_layer))
        style = style_loss([getattr(fy, name) for name in self.style_layers], self.targets)
        return {"content": cfg.content_weight * content, "style": self.style_weight * style,
                "tv": cfg.tv_weight * tv_loss(y)}


CONFIG = StyleConfig   # its fields are the flags of `python -m train` (train/__main__.py)


def run(cfg: StyleConfig) -> tuple[nn.Module, loop.Result]:
    """Train, store (on the main process) and return the network with its training result.
    `--style-weight auto` is resolved first, so the manifest records the weight trained with
    (and the command, `auto`)."""
    if cfg.style_weight == "auto":
        weight = resolve_style_weight(cfg, cfg.style_image)
        cfg = dataclasses.replace(cfg, style_weight=weight)
    return loop.train(cfg, partial(build, cfg))


def resolve_style_weight(cfg: StyleConfig, painting: str) -> float:
    """λ_s of `painting` by the rule of train/style_weight.py, on the training photos."""
    from train.style_weight import auto_style_weight, calibration_photos

    device = resolve_device(cfg.device)
    vgg = load_loss_network(cfg).to(device)
    style = load_style_image(painting, cfg.style_size or cfg.image_size).to(device)
    photos = calibration_photos(cfg.data, cfg.image_size).to(device)
    weight = auto_style_weight(vgg, style, photos)
    print(f"--style-weight auto for {Path(painting).name}: {weight:.3g}")
    return weight


def build(cfg: StyleConfig, device: torch.device) -> loop.Parts:
    """StyleNet, the perceptual objective of one painting, and square crops of the photos."""
    options: dict[str, Any] = {"norm": cfg.norm, "upsample": cfg.upsample, "padding": cfg.padding}
    net = StyleNet(**options)
    vgg = load_loss_network(cfg).to(device)
    style = load_style_image(cfg.style_image, cfg.style_size or cfg.image_size).to(device)
    objective = StyleObjective(vgg, style, cfg)
    images = data.load_folder(cfg.data, short_side=cfg.image_size)
    return loop.Parts(
        name=cfg.name or Path(cfg.style_image).stem, net=net, objective=objective,
        sample=lambda g: data.random_crops(images, cfg.batch_size,
                                           cfg.crop_size or cfg.image_size, g),
        data_images=len(images), task="style", architecture="style", options=options,
        loss_network=f"{vgg.kind}-imagenet", painting=cfg.style_image)
