"""`python -m train eval`: PSNR/SSIM of bicubic upsampling and every SR model in a store.

The protocol of the paper's Table 1 (from SRCNN): crop each HR image to a multiple of the
factor, make the LR image by bicubic downsampling with antialiasing (PIL, like MATLAB imresize),
upsample, round to uint8, and compare luma with a border of `factor` pixels shaved.
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
from train.metrics import y_psnr_ssim

log = logging.getLogger(__name__)
BICUBIC = "bicubic"


def hr_and_lr(path: Path, factor: int) -> tuple[Image.Image, Image.Image]:
    """The HR image cropped to a multiple of `factor`, and its bicubic-downsampled LR version."""
    with Image.open(path) as im:
        hr = im.convert("RGB")
    w, h = hr.size
    hr = hr.crop((0, 0, w - w % factor, h - h % factor))
    lr = hr.resize((hr.width // factor, hr.height // factor), Image.Resampling.BICUBIC)
    return hr, lr


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
             models: list[str] | None = None) -> dict[str, dict]:
    """{model or "bicubic": {"psnr": mean, "ssim": mean, "images": {stem: {psnr, ssim}}}}.

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
        hr, lr = hr_and_lr(path, factor)
        reference = np.asarray(hr)
        for name, net in methods.items():
            out = upsample_bicubic(lr, factor) if net is None else upsample_net(net, lr)
            p, s = y_psnr_ssim(out, reference, border=factor)
            results[name]["images"][path.stem] = {"psnr": p, "ssim": s}
    for r in results.values():
        r["psnr"] = float(np.mean([v["psnr"] for v in r["images"].values()]))
        r["ssim"] = float(np.mean([v["ssim"] for v in r["images"].values()]))
    return results


def format_table(results: dict[str, dict], title: str) -> str:
    images = next(iter(results.values()))["images"]
    lines = [title, f"{'method':<28}{'PSNR (dB)':>10}{'SSIM':>9}"]
    for name, r in results.items():
        lines.append(f"{name:<28}{r['psnr']:>10.2f}{r['ssim']:>9.4f}")
    lines.append(f"(mean over {len(images)} images: {', '.join(images)})")
    return "\n".join(lines)


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hr-dir", required=True, help="folder of high-resolution images")
    parser.add_argument("--factor", type=int, default=4, choices=(2, 4, 8),
                        help="upsampling factor")
    parser.add_argument("--store", default=str(SHIPPED_ROOT), help="model store folder")
    parser.add_argument("--models", default="",
                        help="comma-separated model names and/or 'bicubic' (default: all)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--update-manifests", action="store_true",
                        help="store each model's mean PSNR/SSIM in its manifest metrics")


def main(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] or None
    results = evaluate(args.hr_dir, args.factor, args.store, models)
    key = f"{Path(args.hr_dir).name}_x{args.factor}"
    print(format_table(results, f"{key}: Y-channel PSNR/SSIM, {args.factor}-pixel border"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.update_manifests:
        store = ModelStore(args.store)
        for name, r in results.items():
            if name != BICUBIC:
                store.update_metrics(name, {key: {"psnr": r["psnr"], "ssim": r["ssim"]}})
                log.info("updated %s: %s", name, key)
    return 0
