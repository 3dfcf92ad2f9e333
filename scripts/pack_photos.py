"""Pack the training photos small enough to carry to a lent GPU machine (64 MiB limit there).

Each photo: EXIF-rotated, shorter side resized to --side (Lanczos), centre-cropped square,
JPEG at --quality. The shipped style models were trained on this pack (288, q80, every photo
for the first run, every other one for the continuation); see each manifest's command line.

    python scripts/pack_photos.py ../shared/data/photos .gpu/photos --side 288 --quality 80
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps


def pack(src: Path, out: Path, side: int, quality: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    im: Image.Image   # the opened file, then converted copies of it
    with Image.open(src) as im:
        im.draft("RGB", (side, side))
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        s = side / min(w, h)
        im = im.resize((max(side, round(w * s)), max(side, round(h * s))), Image.Resampling.LANCZOS)
        w, h = im.size
        left, top = (w - side) // 2, (h - side) // 2
        im.crop((left, top, left + side, top + side)).save(out, quality=quality)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--side", type=int, default=288)
    p.add_argument("--quality", type=int, default=80)
    args = p.parse_args()
    files = sorted(args.src.rglob("*.jpg"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: pack(f, args.dst / f.relative_to(args.src), args.side,
                                     args.quality), files))
    print(f"packed {len(files)} photos into {args.dst}")
