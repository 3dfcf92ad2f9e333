"""`python -m train gatys`: stylisation by optimisation (Gatys et al.), the paper's baseline.

The image itself is optimised against exactly the objective the style network is trained on
(train/losses.py, defaults of StyleConfig): lambda_c l_feat at relu2_2 + lambda_s l_style over
relu1_2..relu4_3 + lambda_TV l_TV, the Gram targets taken from the style image resized so its
longer side equals the image size. §4.1 compares against it from white noise (the default,
`--init noise`); `--init content` starts from the content photo instead.

The pixels themselves are optimised and clamped to [0, 1] after every step. L-BFGS takes unit
steps without a line search, as in Gatys et al.'s and Johnson's neural-style implementations.
(A sigmoid parametrisation and torch's strong Wolfe line search both stalled at the loss scale
of the Keras VGG-19, whose 0-255 inputs put the style loss near 1e11.) Without a line search an
iteration can raise the objective, so the result, and every report, is the best image evaluated
so far: what a user stopping after that many iterations would keep.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model_store import data_root
from nets.device import resolve_device
from train.config import StyleConfig, weight
from train.data import load_rgb
from train.losses import feature_loss, gram, style_loss, tv_loss
from train.vgg import LossNetwork
from train.vgg_weights import resolve

_DEFAULTS = StyleConfig()
CONTENT_WEIGHT: float = _DEFAULTS.content_weight
TV_WEIGHT: float = _DEFAULTS.tv_weight
CONTENT_LAYER: str = _DEFAULTS.content_layer
STYLE_LAYERS: tuple[str, ...] = tuple(_DEFAULTS.style_layers.split(","))
FIRST_STEP = 1 / 255  # mean pixel change of L-BFGS's first step: one grey level


def load_image(path: Path | str, longer_side: int = 0) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], resized (bicubic, antialiased) so its longer side is given."""
    im = load_rgb(Path(path)).float().unsqueeze(0) / 255
    if longer_side:
        h, w = im.shape[-2:]
        s = longer_side / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        im = F.interpolate(im, size=size, mode="bicubic", antialias=True, align_corners=False)
    return im.clamp(0, 1)


def style_targets(vgg: LossNetwork, style: torch.Tensor,
                  layers: Sequence[str] = STYLE_LAYERS) -> list[torch.Tensor]:
    """Gram matrices of the style image at each style layer, (1, C, C) each."""
    with torch.no_grad():
        taps = vgg(style)
        return [gram(getattr(taps, name)) for name in layers]


def stylize_by_optimisation(
    content: torch.Tensor,
    style: torch.Tensor | Sequence[torch.Tensor],
    vgg: LossNetwork,
    iterations: int = 500,
    *,
    style_weight: float,
    optimizer: str = "lbfgs",
    init: str = "noise",
    content_weight: float = CONTENT_WEIGHT,
    tv_weight: float = TV_WEIGHT,
    content_layer: str = CONTENT_LAYER,
    style_layers: Sequence[str] = STYLE_LAYERS,
    lr: float | None = None,
    report_at: Sequence[int] = (),
    seed: int = 0,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Optimise an image for `iterations` steps; return it ((1, 3, H, W) in [0, 1]) and history.

    `style` is the style image (1, 3, h, w) or its precomputed Gram targets. The history has
    one entry per iteration in `report_at` (every iteration if empty) with the weighted
    content, style and TV losses and their sum for the best image so far (lowest sum among
    those evaluated, the image after this iteration included), the forward/backward
    evaluations so far and the seconds since the start (Gram targets included, the loss
    evaluation for the report excluded). Without a line search, every L-BFGS or Adam iteration
    is one evaluation.
    """
    device = content.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    if isinstance(style, torch.Tensor):
        targets = style_targets(vgg, style, style_layers)
    else:
        targets = list(style)
    with torch.no_grad():
        content_features = getattr(vgg(content, upto=content_layer), content_layer)
    if init == "noise":
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(content.shape, generator=g).to(device)  # uniform white noise
    elif init == "content":
        x = content.clone()
    else:
        raise ValueError(f"unknown init {init!r}; expected noise or content")
    # torch's L-BFGS first steps by g / |g|_1, moving each pixel by ~1 / numel: at 256x256 a
    # hundred-thousandth of a grey level, too little to measure curvature, and the next unit
    # step then diverged from the content image. Optimising u = x / scale makes the first step
    # move pixels by FIRST_STEP on average; later steps are scaled by the measured curvature,
    # so they do not depend on `scale`. Adam is invariant to the gradient's scale: no need.
    scale = x.numel() * FIRST_STEP if optimizer == "lbfgs" else 1.0
    u = (x / scale).requires_grad_(True)
    if optimizer == "lbfgs":
        # One iteration per step() so reports and clamping happen between iterations; the
        # curvature history persists across calls. Zero tolerances: run exactly `iterations`.
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [u], lr=lr or 1.0, max_iter=1, tolerance_grad=0.0, tolerance_change=0.0,
            history_size=100)
    elif optimizer == "adam":
        opt = torch.optim.Adam([u], lr=lr or 0.02)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected lbfgs or adam")

    def losses() -> dict[str, torch.Tensor]:
        x = u * scale
        taps = vgg(x)
        terms = {
            "content": content_weight * feature_loss(getattr(taps, content_layer),
                                                     content_features),
            "style": style_weight * style_loss([getattr(taps, n) for n in style_layers], targets),
            "tv": tv_weight * tv_loss(x),
        }
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms

    evaluations = 0
    best: dict[str, float] = {"total": math.inf}
    best_x = u.detach() * scale

    def keep_if_best(terms: dict[str, torch.Tensor]) -> None:
        nonlocal best, best_x
        if float(terms["total"].detach()) < best["total"]:
            best = {k: float(v.detach()) for k, v in terms.items()}
            best_x = u.detach() * scale

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        opt.zero_grad()
        terms = losses()
        keep_if_best(terms)
        terms["total"].backward()
        return terms["total"]

    report = set(report_at)
    history: list[dict[str, float]] = []
    paused = 0.0  # time spent on reports, left out of "seconds"
    for it in range(1, iterations + 1):
        # torch's stub types the closure's loss as float; both optimisers take the tensor
        opt.step(closure)  # type: ignore[arg-type]
        with torch.no_grad():
            u.clamp_(0, 1 / scale)
        if report and it not in report:
            continue
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            keep_if_best(losses())
        history.append({"iteration": it, "evaluations": evaluations,
                        "seconds": t - start - paused, **best})
        sync()
        paused += time.perf_counter() - t
    if report and iterations not in report:  # the last iterate has not been evaluated yet
        with torch.no_grad():
            keep_if_best(losses())
    return best_x.clamp(0, 1), history


def save_png(image: torch.Tensor, path: Path | str) -> None:
    array = (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--content", required=True, help="content photo y_c")
    parser.add_argument("--style", required=True, help="style painting y_s")
    parser.add_argument("--iterations", type=int, default=500, help="optimiser iterations")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs",
                        help="L-BFGS (Gatys et al.) or Adam")
    parser.add_argument("--lr", type=float, default=0.0,
                        help="step size (0 = 1.0 for L-BFGS, 0.02 for Adam, pixels in [0, 1])")
    parser.add_argument("--init", choices=("noise", "content"), default="noise",
                        help="start from white noise (the paper's §4.1) or the content image")
    parser.add_argument("--image-size", type=int, default=256,
                        help="longer side of content and style images (0 = content as is)")
    parser.add_argument("--content-weight", type=float, default=CONTENT_WEIGHT, help="lambda_c")
    parser.add_argument("--style-weight", type=weight, default=_DEFAULTS.style_weight,
                        help="lambda_s; auto: chosen by the rule of train/style_weight.py on "
                             "the training photos of the data folder")
    parser.add_argument("--tv-weight", type=float, default=TV_WEIGHT, help="lambda_TV")
    parser.add_argument("--report-at", default="50,100,300,500",
                        help="comma-separated iterations at which losses and time are reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise initialisation")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--vgg-weights", default="",
                        help="converted VGG safetensors (default: find VGG-16/VGG-19 on disk)")
    parser.add_argument("--out", default="", help="write the stylised image to this PNG")
    parser.add_argument("--json", default="", help="write settings and reports to this JSON")


def main(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    kind, state = resolve(weights=Path(args.vgg_weights) if args.vgg_weights else None)
    vgg = LossNetwork(kind, state).to(device)
    content = load_image(args.content, args.image_size).to(device)
    style = load_image(args.style, args.image_size or max(content.shape[-2:])).to(device)
    style_weight = args.style_weight
    if style_weight == "auto":
        from train.style_weight import auto_style_weight, calibration_photos

        photos = calibration_photos(data_root() / "photos", 256).to(device)
        style_weight = auto_style_weight(vgg, load_image(args.style, 256).to(device), photos)
        print(f"--style-weight auto: {style_weight:.3g}")
    report_at = sorted({int(i) for i in args.report_at.split(",") if i.strip()})
    report_at = [i for i in report_at if i <= args.iterations] or [args.iterations]
    image, history = stylize_by_optimisation(
        content, style, vgg, args.iterations, optimizer=args.optimizer, init=args.init,
        content_weight=args.content_weight, style_weight=style_weight,
        tv_weight=args.tv_weight, lr=args.lr or None, report_at=report_at, seed=args.seed)
    print(f"{'iteration':>9}{'evals':>7}{'content':>12}{'style':>12}{'total':>12}{'seconds':>9}")
    for h in history:
        print(f"{h['iteration']:>9}{h['evaluations']:>7}{h['content']:>12.4g}"
              f"{h['style']:>12.4g}{h['total']:>12.4g}{h['seconds']:>9.2f}")
    if args.out:
        save_png(image, args.out)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "run"}
        settings.update(device=str(device), loss_network=kind,
                        size=list(content.shape[-2:]))
        Path(args.json).write_text(json.dumps({"settings": settings, "reports": history},
                                              indent=2) + "\n")
    return 0
