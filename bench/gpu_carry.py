"""`python -m bench.gpu_carry`: what `bash bench/gpu.sh OUT learn` needs on a GPU machine that
has neither `../shared/data` nor the loss network's weights, into `.carry/` (git-ignored), for
the device tool's `carry`:

- `vgg.safetensors`: the loss network's convolutions in fp16 (the trainer's `--vgg-weights`);
- `data/styles/PAINTING.jpg`: the painting to learn, as the shared data folder has it;
- `data/photos/`: training photos, their shorter side at the trainer's 256 px, evenly spread
  over the shared folder: as many as the transfer limit leaves room for (the repository's
  tracked files, `.whl/` and this folder travel together, at most 64 MiB).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from model_store import data_root
from train import data, vgg_weights

REPO = Path(__file__).resolve().parent.parent
LIMIT_BYTES = 64 * 2 ** 20     # the device tool's working tree, carried paths included
SPARE_BYTES = 2 ** 19          # for what a session adds before it calls


def tree_bytes(repo: Path) -> int:
    """The tracked files' size, as they travel."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, check=True,
                           capture_output=True).stdout.decode().split("\0")
    return sum((repo / n).stat().st_size for n in names if n and (repo / n).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def photo_jpeg(path: Path, short_side: int) -> bytes:
    pixels = data.load_rgb(path, short_side).permute(1, 2, 0).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_carry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--painting", default="the_scream", help="a painting of DATA/styles")
    p.add_argument("--max-photos", type=int, default=500)
    p.add_argument("--short-side", type=int, default=256, help="as the trainer resizes them")
    p.add_argument("--vgg-weights", type=Path, default=None,
                   help="converted weights to carry (default: found as the trainer finds them)")
    p.add_argument("--out", type=Path, default=REPO / ".carry")
    args = p.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "data" / "styles").mkdir(parents=True)
    (args.out / "data" / "photos").mkdir()
    kind, state = vgg_weights.resolve(weights=args.vgg_weights)
    vgg_weights.export(kind, state, args.out / "vgg.safetensors", half=True)
    shutil.copyfile(data_root() / "styles" / f"{args.painting}.jpg",
                    args.out / "data" / "styles" / f"{args.painting}.jpg")
    wheels = REPO / ".whl"
    used = (tree_bytes(REPO) + folder_bytes(args.out)
            + (folder_bytes(wheels) if wheels.is_dir() else 0))
    room = LIMIT_BYTES - SPARE_BYTES - used
    files = data.image_files(data_root() / "photos")
    step = max(1, len(files) // args.max_photos)
    kept = 0
    for path in files[::step][:args.max_photos]:
        jpeg = photo_jpeg(path, args.short_side)
        if len(jpeg) > room:
            break
        (args.out / "data" / "photos" / f"{kept:04d}.jpg").write_bytes(jpeg)
        room -= len(jpeg)
        kept += 1
    if kept == 0:
        sys.stderr.write(f"no room for a photo: the tree, .whl/ and {args.out} take "
                         f"{used / 2 ** 20:.1f} MiB of {LIMIT_BYTES / 2 ** 20:.0f}\n")
        return 1
    total = LIMIT_BYTES - SPARE_BYTES - room
    print(f"{args.out}: {kind} in fp16, {args.painting}, {kept} photos; with the tree and "
          f".whl/ {total / 2 ** 20:.1f} MiB travel (limit {LIMIT_BYTES / 2 ** 20:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
