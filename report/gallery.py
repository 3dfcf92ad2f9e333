"""`python -m report gallery`: every style on the content images, and crops of SR outputs.

The pictures go to docs/gallery/ with an index.json that docs/gallery.md and the README's
gallery block are written from.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store import ModelStore
from report.common import markdown_table, write_json, write_text
from report.sr import LOSS_LABELS, sr_models


def sr_crop_box(hr: np.ndarray, side: int, step: int = 8) -> tuple[int, int]:
    """(top, left) of the `side`-pixel window with the most luma variance: where detail is."""
    y = hr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    best, box = -1.0, (0, 0)
    for top in range(0, y.shape[0] - side + 1, step):
        for left in range(0, y.shape[1] - side + 1, step):
            v = float(y[top:top + side, left:left + side].var())
            if v > best:
                best, box = v, (top, left)
    return box


def gallery_markdown(index: dict[str, Any], prefix: str = "", width: int = 160) -> str:
    """Styles x photos (the painting first), then the SR crops, one table per factor."""
    def img(path: str, alt: str) -> str:
        return f'<img src="{prefix}{path}" width="{width}" alt="{alt}">'

    contents = index["contents"]
    rows = [["photo", *(img(c["path"], c["name"]) for c in contents)]]
    for s in index["styles"]:
        outputs = {o["content"]: o["path"] for o in s["outputs"]}
        rows.append([f"{img(s['painting'], s['name'])}<br>`{s['name']}`",
                     *(img(outputs[c["name"]], f"{s['name']} {c['name']}") for c in contents)])
    parts = ["#### Style transfer",
             markdown_table(["style", *(c["name"] for c in contents)], rows, "l" * (len(rows[0])))]
    for factor in sorted({r["factor"] for r in index["sr"]}):
        group = [r for r in index["sr"] if r["factor"] == factor]
        labels = [t["label"] for t in group[0]["tiles"]]
        parts += [f"#### Super-resolution crops, ×{factor}",
                  markdown_table(["image", *labels],
                                 [[r["image"], *(img(t["path"], t["label"])
                                                 + (f"<br>sharpness {t['sharpness']:.2f}"
                                                    if "sharpness" in t else "")
                                                 for t in r["tiles"])]
                                  for r in group], "l" * (len(labels) + 1))]
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run every style model and the SR crops; write docs/gallery/ and docs/gallery.md."""
    import shutil

    from PIL import Image

    from train.data import load_rgb
    from train.evaluate import hr_and_lr, upsample_bicubic, upsample_net
    from train.metrics import y_sharpness

    torch.set_num_threads(args.threads)
    store = ModelStore(args.store)
    data, docs = Path(args.data), Path(args.docs)
    out = docs / "gallery"
    if out.is_dir():
        shutil.rmtree(out)  # generated only: stale pictures of removed models must go
    paths = sorted((data / "content-images").glob("*.jpg"))
    paths += [data / "photos" / p for p in args.photos.split(",") if p]

    def save(array: np.ndarray, rel: str, quality: int = 85) -> str:
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(docs / rel, quality=quality,
                                                          optimize=True, subsampling=0
                                                          if quality >= 90 else 2)
        return rel

    photos = {p.stem: load_rgb(p, args.size) for p in paths}
    index: dict[str, Any] = {"size": args.size, "crop": args.crop, "zoom": args.zoom,
                             "contents": [], "styles": [], "sr": []}
    for stem, im in photos.items():
        index["contents"].append({"name": stem, "path": save(im.permute(1, 2, 0).numpy(),
                                                            f"gallery/content/{stem}.jpg")})
    for m in store.manifests():
        if m.architecture != "style":  # one network per style; the multi-style one is not shown
            continue
        net, _ = store.load(m.name)
        painting = load_rgb(data / "styles" / Path(m.training["config"]["style_image"]).name,
                            args.size)
        entry: dict[str, Any] = {"name": m.name, "outputs": [], "painting": save(
            painting.permute(1, 2, 0).numpy(), f"gallery/styles/{m.name}.jpg")}
        for stem, im in photos.items():
            with torch.inference_mode():
                y = net(im[None].float() / 255)[0]
            array = (y.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            entry["outputs"].append({"content": stem,
                                     "path": save(array, f"gallery/{m.name}/{stem}.jpg")})
        index["styles"].append(entry)
        print(f"gallery: {m.name}")
    models = sr_models(store)
    nets = {name: store.load(name)[0] for name in models}
    for spec in args.sr_images.split(","):
        path = next((data / "sr").glob(f"{spec}.*"))
        for factor in sorted({m["factor"] for m in models.values()}):
            hr, lr = hr_and_lr(path, factor)
            reference = np.asarray(hr)
            top, left = sr_crop_box(reference, args.crop)
            methods = [("bicubic", "bicubic", upsample_bicubic(lr, factor))]
            for loss in ("pixel", "feat"):
                methods += [(name, f"`{name}` ({LOSS_LABELS[loss]})", upsample_net(nets[name], lr))
                            for name, m in sorted(models.items())
                            if m["factor"] == factor and m["loss"] == loss]
            methods.append(("hr", "ground truth", reference))
            tiles = []
            for key, label, array in methods:
                crop = array[top:top + args.crop, left:left + args.crop]
                crop = crop.repeat(args.zoom, axis=0).repeat(args.zoom, axis=1)  # nearest
                rel = f"gallery/sr/{spec.replace('/', '_')}_x{factor}_{key}.jpg"
                tile: dict[str, Any] = {"label": label, "path": save(crop, rel, quality=95)}
                if key != "hr":   # of the whole image: its gradient energy over the HR image's
                    tile["sharpness"] = y_sharpness(array, reference, border=factor)
                tiles.append(tile)
            index["sr"].append({"image": spec, "factor": factor, "box": [top, left, args.crop],
                                "tiles": tiles})
    index["bytes"] = sum(p.stat().st_size for p in out.rglob("*.jpg"))
    write_json(out / "index.json", index)
    write_page(index, docs)
    print(f"gallery: {len(list(out.rglob('*.jpg')))} images, {index['bytes'] / 2**20:.2f} MiB")
    return 0


def write_page(index: dict[str, Any], docs: Path) -> None:
    write_text(docs / "gallery.md", f"""# Gallery

Generated by `python -m report gallery`; do not edit by hand. Every shipped style model on
the content images and a few photos (shorter side {index['size']} px), beside its painting;
then {index['crop']}-pixel crops of super-resolved Set5/Set14 images (shown ×{index['zoom']},
nearest neighbour), where the HR image has the most detail, each with the sharpness of the whole
upsampled image: its luma's gradient energy over the HR image's (1.00: as much edge and texture
as the original). {index['bytes'] / 2**20:.1f} MiB in all.

{gallery_markdown(index)}
""")


