"""`python -m report style-weight`: the rule of `--style-weight auto` on every painting.

For each painting of DATA/styles: its style loss on the calibration photos, the λ_s the rule
gives, the λ_s a shipped network was tuned to by eye (where one was), and what Gatys et al. do
from a photo at the rule's λ_s in 100 iterations: the share of the photo's style loss left, and
the picture (docs/style_weight.jpg).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from model_store import ModelStore
from report.common import machine, machine_line, markdown_table, write_json, write_text

SHEET_COLUMNS = 6


def shipped_weights(store: ModelStore) -> dict[str, dict[str, Any]]:
    """painting stem -> {"model", "style_weight"} of the store's single-style networks."""
    out = {}
    for m in store.manifests():
        cfg = m.training.get("config", {})
        if m.architecture == "style" and "style_image" in cfg:
            out[Path(cfg["style_image"]).stem] = {"model": m.name,
                                                  "style_weight": cfg["style_weight"]}
    return out


def style_weight_table(doc: dict[str, Any]) -> str:
    rows = []
    for name, r in doc["styles"].items():
        shipped = r.get("shipped")
        rows.append([
            f"`{name}`", f"{r['unstyled_style_loss']:.3g}", f"{r['style_weight']:.2g}",
            f"{shipped['style_weight']:.2g} (`{shipped['model']}`)" if shipped else "—",
            f"{shipped['style_weight'] / r['style_weight']:.2f}" if shipped else "—",
            f"{r['check']['style_kept']:.3f}"])
    return markdown_table(
        ["painting", "l_style of the photos", "λ_s auto", "λ_s shipped", "shipped ÷ auto",
         f"Gatys {doc['iterations']} it.: style loss kept"], rows, "lrrrrr")


def picture(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> an 8-bit RGB image."""
    array = (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def contact_sheet(tiles: dict[str, Image.Image], out: Path) -> None:
    """The labelled tiles (the photo, then each painting's Gatys result) in rows of
    SHEET_COLUMNS, each the size of the first."""
    side = next(iter(tiles.values())).width
    rows = math.ceil(len(tiles) / SHEET_COLUMNS)
    sheet = Image.new("RGB", (SHEET_COLUMNS * side, rows * (side + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, tile) in enumerate(tiles.items()):
        x, y = (i % SHEET_COLUMNS) * side, (i // SHEET_COLUMNS) * (side + 14)
        sheet.paste(tile.resize((side, side)), (x, y + 14))
        draw.text((x + 2, y + 1), name, fill="black")
    sheet.save(out, quality=88)


def run(args: argparse.Namespace) -> int:
    """Measure every painting; write docs/style_weight.{json,md,jpg}."""
    from train.data import image_files
    from train.style_training import load_loss_network, load_style_image
    from train.style_weight import (
        CROP,
        ITERATIONS,
        PHOTOS,
        UNSTYLED,
        calibration_photos,
        gatys_check,
        unstyled_style_loss,
    )

    torch.set_num_threads(args.threads)
    data, docs = Path(args.data), Path(args.docs)
    vgg = load_loss_network(argparse.Namespace(vgg_weights=""))
    photos = calibration_photos(data / "photos", args.image_size)
    half = args.check_size // 2
    c = photos.shape[-1] // 2
    check_photo = photos[:1, :, c - half:c + half, c - half:c + half]
    shipped = shipped_weights(ModelStore(args.store))
    tiles = {"photo": picture(check_photo)}
    doc: dict[str, Any] = {"machine": machine(), "unstyled": UNSTYLED, "photos": PHOTOS,
                           "crop": CROP, "image_size": args.image_size,
                           "check_size": args.check_size, "iterations": ITERATIONS,
                           "styles": {}}
    for path in image_files(data / "styles"):
        painting = load_style_image(str(path), args.image_size)
        loss = unstyled_style_loss(vgg, painting, photos)
        row: dict[str, Any] = {"unstyled_style_loss": loss, "style_weight": UNSTYLED / loss}
        if path.stem in shipped:
            row["shipped"] = shipped[path.stem]
        image, row["check"] = gatys_check(vgg, painting, check_photo, row["style_weight"])
        tiles[path.stem] = picture(image)
        doc["styles"][path.stem] = row
        print(f"{path.stem}: λ_s {row['style_weight']:.3g}, Gatys style kept "
              f"{row['check']['style_kept']:.3f}", flush=True)
    products = [r["shipped"]["style_weight"] * r["unstyled_style_loss"]
                for r in doc["styles"].values() if "shipped" in r]
    if products:
        doc["shipped_geometric_mean"] = math.exp(sum(map(math.log, products)) / len(products))
    contact_sheet(tiles, docs / "style_weight.jpg")
    write_json(docs / "style_weight.json", doc)
    write_page(doc, docs)
    return 0


def write_page(doc: dict[str, Any], docs: Path) -> None:
    mean = doc.get("shipped_geometric_mean")
    write_text(docs / "style_weight.md", f"""# `--style-weight auto`: λ_s for any painting

Generated by `python -m report style-weight`; do not edit by hand. {machine_line(doc['machine'])}.

One λ_s does not suit every painting: the style loss of an unstyled photo against these 17
paintings spans more than a decade, so a weight that styles one gives another a faint wash or
pure texture. The rule (`train/style_weight.py`): λ_s = {doc['unstyled']:,.0f} ÷ the style loss
of the unstyled training photos ({doc['photos']} photos spread over the training folder, centre
crops of {doc['crop']} px at the training scale), so that every painting starts training from
the same balance between keeping the photo and moving to the painting. The constant is the
geometric mean of λ_s × that loss for the six shipped styles at the weights they were tuned to
by eye{f' (measured here: {mean:,.0f})' if mean else ''}; the rule gives each of them its
weight within the ratio in the table.

The last column checks what the weight does: Gatys et al. from a {doc['check_size']}-px crop of
the first calibration photo, {doc['iterations']} L-BFGS iterations at the rule's λ_s, and the
share of the photo's own style loss left in the result (the ship gate asks at most 0.5 of a
network on every content image).

{style_weight_table(doc)}

![the photo, then Gatys et al. at the rule's weight for each painting](style_weight.jpg)

Matching the balance between the style and content losses that Gatys et al. reach at 100
iterations was tried first and dropped: that balance hardly moves with λ_s (udnie, 128 px: 0.63
at λ_s = 5e-6, 0.53 at 2e-5), so it cannot choose λ_s.
""")
