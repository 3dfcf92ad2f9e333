"""`python -m report style`: each style network against Gatys et al.'s optimisation (Figure 5).

Both are scored with the objective the model was trained on; a model ships only if its total
loss is at most that of Gatys et al. after 100 iterations on every content image. The table
builders are pure functions of the JSON document, so tests check them on small hand-made inputs
without running any network.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store import ModelStore
from report.common import (
    fmt_loss,
    fmt_seconds,
    machine,
    machine_line,
    markdown_table,
    median_seconds,
    pyplot,
    style_networks,
    write_json,
    write_text,
)

log = logging.getLogger(__name__)


def total(terms: dict[str, float]) -> float:
    return terms["content"] + terms["style"] + terms.get("tv", 0.0)


def style_table(doc: dict[str, Any]) -> str:
    """One row per style: the network's losses, Gatys' at each iteration count with the verdict
    (is the network's total at or below it?), and the ship gate over every content image."""
    settings = doc["settings"]
    iterations = [str(i) for i in settings["iterations"]]
    gate = settings["gate_iterations"]
    header = ["style", "network", *(f"Gatys {i} it." for i in iterations),
              f"network ÷ Gatys {gate} it. (max of {len(settings['check_images'])})", "shipped"]
    rows = []

    def cell(d: dict[str, float]) -> str:
        return f"{fmt_loss(d['content'])} / {fmt_loss(d['style'])} ({fmt_seconds(d['seconds'])})"

    for name, s in doc["styles"].items():
        r, check = s["summary"], s["check"]
        net = total(r["network"])
        rows.append([f"`{name}`", cell(r["network"]),
                     *(cell(r["gatys"][i]) + (" ✓" if net <= total(r["gatys"][i]) else " ✗")
                       for i in iterations),
                     f"{check['max_ratio']:.2f}", "yes" if check["passed"] else "**no**"])
    return markdown_table(header, rows, "l" + "r" * (len(header) - 2) + "l")


def style_legend(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    return (f"Cells: content loss / style loss (seconds), λ-weighted as each model was trained, "
            f"on {', '.join(s['content'])} at {s['size']} px (longer side); Gatys et al. by "
            f"L-BFGS from {s['init']}, the same objective; ✓ where the network's total "
            f"(content + style + TV) is at or below that of Gatys et al., ✗ where it is above. "
            f"Times: {machine_line(doc['machine'])}; wall-clock, so compare them within a row. "
            f"A model ships only if its total is at most that of Gatys et al. after "
            f"{s['gate_iterations']} iterations on every one of {len(s['check_images'])} "
            f"content images (the paper's Figure 5: a network matches 50 to 100 iterations). "
            "L-BFGS takes unit steps without a line search (train/gatys.py), so an iteration "
            "can raise its objective; each cell is the best image evaluated so far.")


def plot_style(doc: dict[str, Any], path: Path) -> None:
    """Figure 5 of the paper: Gatys' losses by iteration, the network's as a horizontal line."""
    plt = pyplot()
    names = list(doc["styles"])
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    iterations = [str(i) for i in doc["settings"]["iterations"]]
    for ax, name in zip(axes.flat, names, strict=False):
        r = doc["styles"][name]["summary"]
        for term, colour in (("style", "C0"), ("content", "C1")):
            ax.plot([int(i) for i in iterations], [r["gatys"][i][term] for i in iterations],
                    "o-", color=colour, label=f"Gatys {term}")
            ax.axhline(r["network"][term], color=colour, ls="--", label=f"network {term}")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("L-BFGS iterations")
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Score each style network and Gatys et al.; write docs/style.*, the shipping check."""
    from train.gatys import load_image, style_targets, stylize_by_optimisation
    from train.losses import feature_loss, style_loss, tv_loss
    from train.style_training import load_style_image
    from train.vgg import LossNetwork
    from train.vgg_weights import resolve

    torch.set_num_threads(args.threads)
    store = ModelStore(args.store)
    names = style_networks(store, args.models)
    kind, state = resolve()
    vgg = LossNetwork(kind, state)
    data = Path(args.data)
    iterations = sorted(int(i) for i in args.iterations.split(","))
    content_names = args.content.split(",")
    check_paths = sorted((data / "content-images").glob("*.jpg"))
    docs = Path(args.docs)
    settings = {"content": content_names, "size": args.size, "iterations": iterations,
                "init": args.init, "gate_iterations": args.gate_iterations,
                "check_images": [p.stem for p in check_paths], "loss_network": kind}
    if missing := set(content_names) - set(settings["check_images"]):
        raise ValueError(f"--content {', '.join(sorted(missing))}: not in {data}/content-images")
    styles: dict[str, Any] = {}
    for name in names:
        net, manifest = store.load(name)
        cfg = manifest.training["config"]
        weights = {"content_weight": cfg["content_weight"], "style_weight": cfg["style_weight"],
                   "tv_weight": cfg["tv_weight"]}
        layers = cfg["style_layers"].split(",")
        style_path = data / "styles" / Path(cfg["style_image"]).name
        style = load_style_image(str(style_path), cfg["style_size"] or cfg["image_size"])
        targets = style_targets(vgg, style, layers)

        def losses(x: torch.Tensor, photo: torch.Tensor, cfg=cfg, layers=layers,
                   targets=targets) -> dict[str, float]:
            """The training objective's weighted terms (train/style_training.py)."""
            at = cfg["content_layer"]
            with torch.no_grad():
                fx, fp = vgg(x), vgg(photo, upto=at)
                c = feature_loss(getattr(fx, at), getattr(fp, at))
                s = style_loss([getattr(fx, n) for n in layers], targets)
                return {"content": cfg["content_weight"] * float(c),
                        "style": cfg["style_weight"] * float(s),
                        "tv": cfg["tv_weight"] * float(tv_loss(x))}

        per_image: dict[str, Any] = {}
        for path in check_paths:
            photo = load_image(path, args.size)
            with torch.no_grad():
                seconds, _ = median_seconds(functools.partial(net, photo), args.runs)
                out = net(photo)
            in_table = path.stem in content_names
            last = iterations[-1] if in_table else args.gate_iterations
            started = time.perf_counter()
            image, history = stylize_by_optimisation(
                photo, targets, vgg, last, init=args.init,
                report_at=sorted({i for i in iterations if i <= last} | {args.gate_iterations}),
                content_layer=cfg["content_layer"], style_layers=layers, **weights)
            log.info("%s on %s: Gatys %d iterations in %.0f s", name, path.stem, last,
                     time.perf_counter() - started)
            per_image[path.stem] = {
                "shape": list(photo.shape[-2:]),
                "network": {**losses(out, photo), "seconds": seconds},
                "gatys": {str(h["iteration"]): {k: h[k] for k in ("content", "style", "tv",
                                                                  "seconds")}
                          for h in history},
                "unstyled": losses(photo, photo),
            }
            if in_table:
                save_jpeg(out, docs / "style" / f"{name}_{path.stem}_network.jpg")
                save_jpeg(image, docs / "style" / f"{name}_{path.stem}_gatys{last}.jpg")
        ratios = {stem: total(r["network"]) / total(r["gatys"][str(args.gate_iterations)])
                  for stem, r in per_image.items()}
        max_ratio = max(ratios.values())
        check = {"ratios": ratios, "max_ratio": max_ratio, "passed": max_ratio <= 1.0,
                 "gate_iterations": args.gate_iterations, "size": args.size}
        shown = [per_image[c] for c in content_names]
        summary = {"images": content_names, "size": args.size,
                   "network": mean_terms([r["network"] for r in shown]),
                   "gatys": {str(i): mean_terms([r["gatys"][str(i)] for r in shown])
                             for i in iterations},
                   "unstyled": mean_terms([r["unstyled"] for r in shown])}
        store.update_metrics(name, {"style_vs_gatys": summary, "style_check": check})
        styles[name] = {"summary": summary, "check": check, "per_image": per_image}
        print(f"{name}: network {summary['network']}, Gatys {summary['gatys']}, network over "
              f"Gatys {args.gate_iterations} at most {max_ratio:.3f} -> "
              f"{'pass' if check['passed'] else 'FAIL'}")
    doc = {"machine": machine(), "settings": settings, "styles": styles}
    write_json(docs / "style.json", doc)
    write_page(doc, docs)
    failed = [n for n, s in styles.items() if not s["check"]["passed"]]
    if failed:
        print(f"NOT SHIPPABLE (total above Gatys et al. at {args.gate_iterations} iterations "
              f"on some content image): {', '.join(failed)}")
    return 0


def write_page(doc: dict[str, Any], docs: Path) -> None:
    plot_style(doc, docs / "style.png")
    iterations = doc["settings"]["iterations"]
    content_names = doc["settings"]["content"]
    kind = doc["settings"]["loss_network"]
    last = iterations[-1]
    pictures = "\n".join(
        f"| `{n}` | " + " | ".join(f'<img src="style/{n}_{c}_{out}.jpg" width="200">'
                                   for c in content_names for out in ("network", f"gatys{last}"))
        + " |" for n in doc["styles"])
    header = " | ".join(f"{c}: network | {c}: Gatys {last} it." for c in content_names)
    write_text(docs / "style.md", f"""# Style transfer: the network against optimisation

Generated by `python -m report style`; do not edit by hand.

The idea of the paper's Figure 5: the feed-forward network minimises, in one pass, the objective
that Gatys et al. minimise by optimising the pixels. For each shipped style the network's output
and L-BFGS after {', '.join(map(str, iterations))} iterations are scored with the same loss
network ({kind}) and the same weights as that model's training (its manifest).
The ship gate, on each of the content images: the network's total at most that of Gatys et al.
after {doc["settings"]["gate_iterations"]} iterations.

{style_legend(doc)}

{style_table(doc)}

![losses by iteration](style.png)

| style | {header} |
| :--- |{" :---: |" * 2 * len(content_names)}
{pictures}
""")


def mean_terms(entries: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([e[k] for e in entries])) for k in entries[0]}


def save_jpeg(image: torch.Tensor, path: Path, quality: int = 85) -> None:
    """(1, 3, H, W) in [0, 1] -> a small JPEG (docs/ holds pictures, not lossless data)."""
    from PIL import Image

    array = (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    im = Image.fromarray(np.ascontiguousarray(array))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=quality, optimize=True)


