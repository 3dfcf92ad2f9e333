"""`--style-weight auto`: λ_s for any painting, by a measured rule.

How strongly a painting must be weighted depends on the painting: the Gram matrices of a dark,
smooth painting sit closer to any photo's than those of a bright mosaic, so one λ_s gives one
painting a faint wash and another pure texture. The rule: choose λ_s so that the unstyled
training photos have the same weighted style loss for every painting,

    λ_s = UNSTYLED / mean over photos of l_style(photo, painting),

so that training starts from the same balance between keeping the photo and moving to the
painting whatever the painting. UNSTYLED is the geometric mean of that product for the six
shipped styles at the weights they were tuned to by eye (`python -m train style-weight --check`
measures it). It costs one loss-network pass over a few photos.

Matching the balance that Gatys et al. reach at 100 iterations instead was tried and dropped:
that balance hardly moves with λ_s (udnie at 128 px: 0.63 at λ_s = 5e-6, 0.53 at 2e-5), so it
cannot choose λ_s. `--check` runs Gatys et al. from the photo at the chosen λ_s, to show what
it does to each painting (docs/style_weight.md).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from model_store import data_root
from train.data import image_files, load_rgb
from train.gatys import STYLE_LAYERS, save_png, style_targets, stylize_by_optimisation
from train.losses import style_loss
from train.vgg import LossNetwork

UNSTYLED = 3.6e5    # λ_s l_style of the unstyled photos: the shipped styles' geometric mean
PHOTOS = 8          # training photos the rule is measured on
CROP = 256          # their centre crops' side (at most the training --image-size)
ITERATIONS = 100    # of Gatys et al. in --check


def calibration_photos(folder: Path | str, image_size: int) -> torch.Tensor:
    """(PHOTOS, 3, side, side), side = min(CROP, image_size): centre crops of photos spread
    evenly over the sorted folder, each first scaled to `image_size` on its short side (the
    scale training sees)."""
    files = image_files(folder)
    if not files:
        raise ValueError(f"no photos under {folder} to calibrate the style weight on")
    side = min(CROP, image_size)
    out = []
    for path in [files[i * len(files) // PHOTOS] for i in range(min(PHOTOS, len(files)))]:
        im = load_rgb(path, short_side=image_size).float() / 255
        _, h, w = im.shape
        top, left = (h - side) // 2, (w - side) // 2
        out.append(im[:, top:top + side, left:left + side])
    return torch.stack(out)


def unstyled_style_loss(vgg: LossNetwork, painting: torch.Tensor, photos: torch.Tensor
                        ) -> float:
    """l_style of the photos themselves against the painting, averaged over the photos."""
    targets = style_targets(vgg, painting)
    with torch.no_grad():
        taps = vgg(photos)
        return float(style_loss([getattr(taps, name) for name in STYLE_LAYERS], targets))


def auto_style_weight(vgg: LossNetwork, painting: torch.Tensor, photos: torch.Tensor) -> float:
    """λ_s for `painting` ((1, 3, h, w) in [0, 1], at the scale training uses)."""
    return UNSTYLED / unstyled_style_loss(vgg, painting, photos)


def gatys_check(vgg: LossNetwork, painting: torch.Tensor, photo: torch.Tensor,
                style_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Gatys et al. from the photo at λ_s: the image, its weighted losses, and the share of
    the photo's style loss it keeps."""
    targets = style_targets(vgg, painting)
    image, history = stylize_by_optimisation(photo, targets, vgg, ITERATIONS, init="content",
                                             style_weight=style_weight,
                                             report_at=[ITERATIONS])
    unstyled = style_weight * unstyled_style_loss(vgg, painting, photo)
    end = history[-1]
    return image, {"content": end["content"], "style": end["style"],
                   "style_kept": end["style"] / unstyled}


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--styles", default=str(data_root() / "styles"),
                        help="a painting, or a folder of them")
    parser.add_argument("--data", default=str(data_root() / "photos"),
                        help="training photos the rule is measured on")
    parser.add_argument("--image-size", type=int, default=256,
                        help="the photos' short side and the paintings' longer side")
    parser.add_argument("--given", default="",
                        help="comma list of name=λ_s (e.g. the shipped styles' weights): "
                             "their λ_s l_style of the unstyled photos, and UNSTYLED from them")
    parser.add_argument("--check", default="",
                        help="a folder: Gatys et al. from the first calibration photo at each "
                             "chosen λ_s, the images written there")
    parser.add_argument("--vgg-weights", default="", help="converted VGG safetensors")
    parser.add_argument("--json", default="", help="write the figures to this JSON file")


def main(args: argparse.Namespace) -> int:
    """λ_s by the rule for each painting; optionally the product at given weights and a check
    by Gatys et al."""
    from train.style_training import load_loss_network, load_style_image

    vgg = load_loss_network(args)
    photos = calibration_photos(args.data, args.image_size)
    styles = Path(args.styles)
    paintings = image_files(styles) if styles.is_dir() else [styles]
    given = {k: float(v) for k, v in (kv.split("=") for kv in args.given.split(",") if kv)}
    doc: dict = {"unstyled": UNSTYLED, "photos": len(photos), "crop": photos.shape[-1],
                 "image_size": args.image_size, "styles": {}}
    for path in paintings:
        painting = load_style_image(str(path), args.image_size)
        loss = unstyled_style_loss(vgg, painting, photos)
        row: dict = {"unstyled_style_loss": loss, "style_weight": UNSTYLED / loss}
        line = f"{path.stem:<24} l_style {loss:.4g}  λ_s {row['style_weight']:.3g}"
        if path.stem in given:
            row["given"] = {"style_weight": given[path.stem],
                            "weighted_unstyled": given[path.stem] * loss}
            line += f"  given {given[path.stem]:.3g}: λ_s l_style {given[path.stem] * loss:.4g}"
        if args.check:
            image, row["check"] = gatys_check(vgg, painting, photos[:1], row["style_weight"])
            Path(args.check).mkdir(parents=True, exist_ok=True)
            save_png(image, Path(args.check) / f"{path.stem}.png")
            line += f"  Gatys {ITERATIONS}: style kept {row['check']['style_kept']:.3f}"
        doc["styles"][path.stem] = row
        print(line, flush=True)
    products = [r["given"]["weighted_unstyled"] for r in doc["styles"].values() if "given" in r]
    if products:
        doc["unstyled_from_given"] = math.exp(sum(map(math.log, products)) / len(products))
        print(f"geometric mean of the given λ_s l_style: {doc['unstyled_from_given']:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0
