"""Training images: a folder read recursively into memory once, then random crops from it.

Decoding ~2k photos once beats decoding them every epoch, and makes sampling deterministic:
every crop comes from one seeded generator.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)
EXTENSIONS = {".jpg", ".jpeg", ".png"}


def image_files(root: Path | str) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def load_rgb(path: Path, short_side: int | None = None, min_side: int = 0) -> torch.Tensor:
    """uint8 (3, H, W), EXIF orientation applied. The shorter side is resized to `short_side`
    if given, else only images whose shorter side is below `min_side` are enlarged to it."""
    im: Image.Image   # the opened file, then converted copies of it
    with Image.open(path) as im:
        if short_side and im.format == "JPEG":
            im.draft("RGB", (short_side, short_side))  # let libjpeg decode at a reduced scale
        im = ImageOps.exif_transpose(im).convert("RGB")
        target = short_side or (min_side if min(im.size) < min_side else 0)
        if target:
            w, h = im.size
            s = target / min(w, h)
            im = im.resize((max(target, round(w * s)), max(target, round(h * s))),
                           Image.Resampling.BICUBIC, reducing_gap=3.0)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()


def load_folder(root: Path | str, short_side: int | None = None, min_side: int = 0,
                workers: int = 4) -> list[torch.Tensor]:
    """Every readable image under `root`; unreadable files are skipped with a warning."""
    files = image_files(root)

    def one(path: Path) -> torch.Tensor | None:
        try:
            return load_rgb(path, short_side, min_side)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            log.warning("skipping unreadable image %s: %s", path, e)
            return None

    with ThreadPoolExecutor(workers) as pool:
        images = [im for im in pool.map(one, files) if im is not None]
    if not images:
        raise ValueError(f"no readable .jpg/.png images under {root}")
    return images


def random_crops(images: list[torch.Tensor], batch: int, size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """(batch, 3, size, size) float in [0, 1]: random image, random position, random flip."""
    out = torch.empty(batch, 3, size, size, dtype=torch.uint8)
    for i in range(batch):
        im = images[int(torch.randint(len(images), (1,), generator=generator))]
        _, h, w = im.shape
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = im[:, top:top + size, left:left + size]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop
    return out.float() / 255
