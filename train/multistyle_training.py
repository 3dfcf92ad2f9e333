"""`python -m train multistyle`: one conditional-instance-norm network for N styles.

Each step trains one style, drawn at random, on a batch of photos (Dumoulin et al. 2017), with
the same perceptual losses as `python -m train style`, or, with `--teachers STORE`, by distilling
the per-style networks already trained (much cheaper: no loss network).

`--add-style PAINTING` learns one more style into a trained network: a new row of scale and
shift in every normalisation layer, trained with the perceptual losses of the painting while
every other weight stays as it was, so the other styles' outputs do not change by a bit.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nets.multistyle_net import ConditionalInstanceNorm, MultiStyleNet
from train import data, loop
from train.config import MultiStyleConfig, StyleConfig
from train.losses import pixel_loss
from train.style_training import (
    StyleObjective,
    load_loss_network,
    load_style_image,
    resolve_style_weight,
)


class MultiStyleObjective(nn.Module):
    """Draw a style for the batch, then apply that style's objective to net(x, one-hot)."""

    def __init__(self, per_style: list[nn.Module], seed: int) -> None:
        super().__init__()
        self.per_style = nn.ModuleList(per_style)
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = int(torch.randint(len(self.per_style), (1,), generator=self.gen))
        mix = torch.zeros(x.shape[0], len(self.per_style), device=x.device)
        mix[:, s] = 1
        return self.per_style[s](partial(net, mix=mix), x)


class Distillation(nn.Module):
    """Pixel loss against a trained single-style network's output."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher.requires_grad_(False).eval()

    def forward(self, net, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = self.teacher(x)
        return {"distil": pixel_loss(net(x), target)}


CONFIG = MultiStyleConfig   # its fields are the flags of `python -m train` (train/__main__.py)


def run(cfg: MultiStyleConfig) -> tuple[nn.Module, loop.Result]:
    """Train, store (on the main process) and return the network with its training result.
    Each `auto` weight is resolved first, so the manifest records the weights trained with."""
    if cfg.add_style:
        if cfg.style_weight == "auto":
            weight = resolve_style_weight(cfg, cfg.add_style)
            cfg = dataclasses.replace(cfg, style_weight=weight)
        cfg = dataclasses.replace(cfg, lr=cfg.add_style_lr, lr_decay=True)
        return loop.train(cfg, partial(build_added_style, cfg))
    if not cfg.teachers:
        styles = cfg.styles.split(",")
        given = (cfg.style_weights.split(",") if cfg.style_weights
                 else [str(cfg.style_weight)] * len(styles))
        if len(given) != len(styles):
            raise ValueError(f"{len(given)} style weights for {len(styles)} styles")
        resolved = [str(resolve_style_weight(cfg, str(Path(cfg.style_dir) / f"{style}.jpg")))
                    if w == "auto" else w for style, w in zip(styles, given, strict=True)]
        cfg = dataclasses.replace(cfg, style_weights=",".join(resolved))
    return loop.train(cfg, partial(build, cfg))


def style_weights(cfg: MultiStyleConfig) -> list[float]:
    """λ_s of each style, from --style-weights (resolved by run) or --style-weight."""
    given = cfg.style_weights.split(",") if cfg.style_weights else [str(cfg.style_weight)]
    return [float(w) for w in given] * (1 if cfg.style_weights else len(cfg.styles.split(",")))


def build(cfg: MultiStyleConfig, device: torch.device) -> loop.Parts:
    """MultiStyleNet, one objective per style (perceptual, or distillation of `--teachers`),
    and square crops of the photos."""
    styles = cfg.styles.split(",")
    options: dict[str, Any] = {"styles": styles, "upsample": cfg.upsample, "padding": cfg.padding}
    if cfg.teachers:
        from model_store import ModelStore

        teachers = ModelStore(cfg.teachers)
        nets = [teachers.load(s)[0] for s in styles]
        first = teachers.manifest(styles[0]).options  # the student copies the teachers' layers
        options.update(upsample=first.get("upsample", "transposed"),
                       padding=first.get("padding", "zero"))
        net = MultiStyleNet(**options)
        if not cfg.init_from:  # warm start: every style begins as the first teacher
            net.init_from_single(nets[0])
        per_style: list[nn.Module] = [Distillation(t.to(device)) for t in nets]
        loss_network = "none (distilled from " + ", ".join(
            f"{s}:{teachers.manifest(s).sha256[:12]}" for s in styles) + ")"
    else:
        net = MultiStyleNet(**options)
        vgg = load_loss_network(cfg).to(device)
        per_style = []
        for style, weight in zip(styles, style_weights(cfg), strict=True):
            painting = load_style_image(str(Path(cfg.style_dir) / f"{style}.jpg"),
                                        cfg.style_size or cfg.image_size).to(device)
            one = StyleConfig(**{**_style_fields(cfg), "style_weight": weight})
            per_style.append(StyleObjective(vgg, painting, one))
        loss_network = f"{vgg.kind}-imagenet"
    objective = MultiStyleObjective(per_style, cfg.seed)
    images = data.load_folder(cfg.data, short_side=cfg.image_size)
    return loop.Parts(
        name=cfg.name or "multistyle", net=net, objective=objective,
        sample=lambda g: data.random_crops(images, cfg.batch_size,
                                           cfg.crop_size or cfg.image_size, g),
        data_images=len(images), task="style", architecture="multistyle", options=options,
        loss_network=loss_network)


class OneStyle(nn.Module):
    """The objective of style `index` of `count`: net(x, one-hot)."""

    def __init__(self, objective: nn.Module, index: int, count: int) -> None:
        super().__init__()
        self.objective, self.index, self.count = objective, index, count

    def forward(self, net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mix = torch.zeros(x.shape[0], self.count, device=x.device)
        mix[:, self.index] = 1
        return self.objective(partial(net, mix=mix), x)


def build_added_style(cfg: MultiStyleConfig, device: torch.device) -> loop.Parts:
    """The stored multi-style network with one more style, only whose rows of scale and
    shift train (the other rows' gradients are zeroed, so Adam never moves them)."""
    from model_store import ModelStore

    base = cfg.init_from or "multistyle"
    style = cfg.name or Path(cfg.add_style).stem
    trained, manifest = ModelStore(cfg.store).load(base)
    if not isinstance(trained, MultiStyleNet):
        raise ValueError(f"{base} is not a multi-style network")
    if cfg.replace and style in trained.styles:
        trained = trained.without_style(style)
    net = trained.with_style(style).to(device).requires_grad_(False)
    index = len(net.styles) - 1
    keep = torch.zeros(len(net.styles), 1, device=device)
    keep[index] = 1
    for norm in net.modules():
        if isinstance(norm, ConditionalInstanceNorm):
            for p in (norm.scale, norm.shift):
                p.requires_grad_(True)
                p.register_hook(lambda grad: grad * keep)
    vgg = load_loss_network(cfg).to(device)
    painting = load_style_image(cfg.add_style, cfg.style_size or cfg.image_size).to(device)
    objective = OneStyle(StyleObjective(vgg, painting, StyleConfig(**_style_fields(cfg))),
                         index, len(net.styles))
    images = data.load_folder(cfg.data, short_side=cfg.image_size)
    upsample, padding = net.options()
    return loop.Parts(
        name=base, run_name=f"{base}+{style}", net=net, objective=objective,
        sample=lambda g: data.random_crops(images, cfg.batch_size,
                                           cfg.crop_size or cfg.image_size, g),
        data_images=len(images), task="style", architecture="multistyle",
        options={"styles": net.styles, "upsample": upsample, "padding": padding},
        loss_network=f"{vgg.kind}-imagenet", painting=cfg.add_style, painting_style=style,
        init_from={"name": manifest.name, "sha256": manifest.sha256,
                   "iterations": manifest.iterations, "training": manifest.training})


def _style_fields(cfg: MultiStyleConfig) -> dict:
    names = {f.name for f in dataclasses.fields(StyleConfig)}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
