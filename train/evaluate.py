"""`python -m train eval`: PSNR/SSIM of bicubic upsampling and every SR model in a store.

The protocol of the paper's Table 1 (from SRCNN): crop each HR image to a multiple of the
factor, make the LR image by bicubic downsampling with antialiasing (PIL, like MATLAB imresize),
upsample, round to uint8, and compare luma with a border of `factor` pixels shaved.
`--degradation paper` makes the LR images the paper's way instead (train/degrade.py), and every
method also gets its sharpness: its luma's gradient energy over the HR image's.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from model_store import SHIPPED_ROOT, ModelStore
from train.data import image_files
from train.degrade import Degradation, degrade
from train.metrics import y_psnr_ssim, y_sharpness

log = logging.getLogger(__name__)
BICUBIC = "bicubic"


def hr_and_lr(path: Path, factor: int, degradation: Degradation = "bicubic"
              ) -> tuple[Image.Image, Image.Image]:
    """The HR image cropped to a multiple of `factor`, and its LR version: PIL's antialiased
    bicubic (`bicubic`), or the paper's blur and bicubic rounded to 8 bits (`paper`)."""
    with Image.open(path) as im:
        hr = im.convert("RGB")
    w, h = hr.size
    hr = hr.crop((0, 0, w - w % factor, h - h % factor))
    if degradation == "bicubic":
        return hr, hr.resize((hr.width // factor, hr.height // factor), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(hr).copy()).permute(2, 0, 1)[None].float() / 255
    lr = (degrade(x, factor, kind=degradation)[0] * 255).round().byte().permute(1, 2, 0)
    return hr, Image.fromarray(lr.numpy())


def upsample_bicubic(lr: Image.Image, factor: int) -> np.ndarray:
    return np.asarray(lr.resize((lr.width * factor, lr.height * factor),
                                Image.Resampling.BICUBIC))


def upsample_net(net: nn.Module, lr: Image.Image) -> np.ndarray:
    """Run an SR network in fp32 on the CPU and quantise its output to uint8 like a saved PNG."""
    x = torch.from_numpy(np.asarray(lr).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = net(x)[0]
    return (y.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def evaluate(hr_dir: Path | str, factor: int, store: Path | str = SHIPPED_ROOT,
             models: list[str] | None = None, degradation: Degradation = "bicubic"
             ) -> dict[str, dict]:
    """{model or "bicubic": {"psnr", "ssim", "sharpness": means, "images": {stem: {...}}}}.

    `models` restricts the methods (names from the store, and/or "bicubic"); None = all.
    """
    files = image_files(hr_dir)
    if not files:
        raise FileNotFoundError(f"no images in {hr_dir}")
    methods: dict[str, nn.Module | None] = {}
    if models is None or BICUBIC in models:
        methods[BICUBIC] = None
    ms = ModelStore(store)
    for manifest in ms.manifests():
        if manifest.task != "superres" or manifest.factor != factor:
            continue
        if models is None or manifest.name in models:
            methods[manifest.name], _ = ms.load(manifest.name)
    missing = set(models or ()) - set(methods)
    if missing:
        raise ValueError(f"no x{factor} SR model(s) {', '.join(sorted(missing))} in {store}")
    results: dict[str, dict] = {name: {"images": {}} for name in methods}
    for path in files:
        hr, lr = hr_and_lr(path, factor, degradation)
        reference = np.asarray(hr)
        for name, net in methods.items():
            out = upsample_bicubic(lr, factor) if net is None else upsample_net(net, lr)
            p, s = y_psnr_ssim(out, reference, border=factor)
            results[name]["images"][path.stem] = {
                "psnr": p, "ssim": s, "sharpness": y_sharpness(out, reference, border=factor)}
    for r in results.values():
        for metric in ("psnr", "ssim", "sharpness"):
            r[metric] = float(np.mean([v[metric] for v in r["images"].values()]))
    return results


def metric_key(dataset: str, factor: int, degradation: Degradation = "bicubic") -> str:
    """A manifest's metrics key: `Set5_x4` for the standard inputs, `Set5_x4_paper` for the
    paper's degradation."""
    return f"{dataset}_x{factor}" + ("" if degradation == "bicubic" else f"_{degradation}")


def format_table(results: dict[str, dict], title: str) -> str:
    images = next(iter(results.values()))["images"]
    lines = [title, f"{'method':<28}{'PSNR (dB)':>10}{'SSIM':>9}{'sharpness':>11}"]
    for name, r in results.items():
        lines.append(f"{name:<28}{r['psnr']:>10.2f}{r['ssim']:>9.4f}{r['sharpness']:>11.3f}")
    lines.append(f"(mean over {len(images)} images: {', '.join(images)})")
    return "\n".join(lines)


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hr-dir", required=True, help="folder of high-resolution images")
    parser.add_argument("--factor", type=int, default=4, choices=(2, 4, 8),
                        help="upsampling factor")
    parser.add_argument("--store", default=str(SHIPPED_ROOT), help="model store folder")
    parser.add_argument("--models", default="",
                        help="comma-separated model names and/or 'bicubic' (default: all)")
    parser.add_argument("--degradation", default="bicubic", choices=("bicubic", "paper"),
                        help="how the LR inputs are made (train/degrade.py)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--update-manifests", action="store_true",
                        help="store each model's mean PSNR/SSIM in its manifest metrics")


def main(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] or None
    results = evaluate(args.hr_dir, args.factor, args.store, models, args.degradation)
    key = metric_key(Path(args.hr_dir).name, args.factor, args.degradation)
    print(format_table(results, f"{key}: Y-channel PSNR/SSIM, {args.factor}-pixel border"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.update_manifests:
        store = ModelStore(args.store)
        for name, r in results.items():
            if name != BICUBIC:
                store.update_metrics(name, {key: {m: r[m] for m in ("psnr", "ssim", "sharpness")}})
                log.info("updated %s: %s", name, key)
    return 0
