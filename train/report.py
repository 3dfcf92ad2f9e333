"""`python -m train report {sr,style,speed,gallery,readme}`: the measurements behind the README.

Each measurement writes docs/<name>.md (table, plot, notes), docs/<name>.json (every figure, the
machine it was measured on) and docs/<name>.png, and stores its figures in the manifests of the
models it measured, so that a model carries its own results. `readme` then rewrites the
generated blocks of README.md from the JSON files; tests/test_readme_figures.py checks that
every number there matches the manifests. All commands read whatever models the store holds.

The table builders are pure functions of the JSON documents, so tests can check them on small
hand-made inputs without running any network.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import summary as bench_summary
from model_store import SHIPPED_ROOT, ModelStore, data_root

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATA = data_root()
DOCS = REPO / "docs"
README = REPO / "README.md"
BLOCKS = ("sr-table", "style-table", "speed-table", "bench", "gallery")

# The paper's x4 super-resolution means (PSNR dB, SSIM), as printed in its Fig. 8 (ECCV 2016
# camera-ready; the speed table is its Table 1).
PAPER_SR_X4: dict[str, dict[str, tuple[float, float]]] = {
    "Set5": {"bicubic": (28.43, 0.8114), "pixel": (28.40, 0.8205), "SRCNN": (30.48, 0.8628),
             "feat": (27.09, 0.7680)},
    "Set14": {"bicubic": (25.99, 0.7301), "pixel": (25.75, 0.6994), "SRCNN": (27.49, 0.7503),
              "feat": (24.99, 0.6731)},
}
# The paper's speed table (seconds on a GTX Titan X): Gatys et al. at 100/300/500 L-BFGS
# iterations, and one forward pass of the style network.
PAPER_SPEED: dict[str, dict[str, float]] = {
    "256": {"100": 3.17, "300": 9.52, "500": 15.86, "network": 0.015},
    "512": {"100": 10.97, "300": 32.91, "500": 54.85, "network": 0.05},
    "1024": {"100": 42.89, "300": 128.66, "500": 214.44, "network": 0.21},
}
PAPER_GPU = "NVIDIA GTX Titan X"
GPU_BENCH = REPO / "bench" / "results" / "model-cuda-h200.json"
LOSS_LABELS = {"pixel": "pixel loss", "feat": "feature loss"}


# ----------------------------------------------------------------------------- formatting


def fmt_loss(x: float) -> str:
    """Losses as whole numbers with thousands separators: they span 1e3..1e7 here."""
    return f"{x:,.0f}"


def fmt_seconds(s: float) -> str:
    """Three significant figures at most, so sub-second and hour-long runs both read well."""
    if s < 1:
        return f"{s:.3f} s"
    if s < 100:
        return f"{s:.1f} s"
    return f"{s:,.0f} s"


def fmt_quality(psnr: float, ssim: float) -> str:
    return f"{psnr:.2f} / {ssim:.4f}"


def markdown_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A GitHub table; `align` gives one letter per column (l or r), left by default."""
    marks = [":---" if a == "l" else "---:" for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What a figure was measured on; the load average shows whether the CPU was shared."""
    from bench.machine import describe

    info = describe()
    info["load_average"] = round(os.getloadavg()[0], 2)
    return info


def machine_line(m: dict[str, Any]) -> str:
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    text = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {threads}"
    if m.get("gpu"):
        text += f", {m['gpu']}"
    if "load_average" in m:
        text += f" (1-min load average {m['load_average']} at the end of the run"
        if m["load_average"] > m["threads"] + 0.5:   # more than this run's own threads
            text += ": other jobs shared the CPU, so the times are inflated"
        text += ")"
    return text


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


def pyplot():
    """matplotlib without a display; imported late so `python -m train` starts fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def median_seconds(run: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    """Median wall time of `runs` calls after one warm-up call (allocator, kernel selection)."""
    run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


# ----------------------------------------------------------------------------- SR


def sr_models(store: ModelStore) -> dict[str, dict[str, Any]]:
    """{name: {"factor", "loss"}} of every SR model in the store, the loss from its training."""
    return {m.name: {"factor": m.factor, "loss": m.training.get("config", {}).get("loss", "feat")}
            for m in store.manifests() if m.task == "superres"}


def sr_table(doc: dict[str, Any]) -> str:
    """Our PSNR/SSIM beside the paper's, one row per method and factor (pixel, SRCNN, feature)."""
    datasets = list(doc["results"])
    header = ["method", "factor"]
    for ds in datasets:
        header += [f"{ds} here", f"{ds} paper"]
    rows = []

    def row(label: str, factor: int, ours: str | None, paper_key: str | None) -> list[str]:
        cells = [label, f"×{factor}"]
        for ds in datasets:
            r = doc["results"][ds].get(f"x{factor}", {}).get(ours) if ours else None
            cells.append(fmt_quality(r["psnr"], r["ssim"]) if r else "—")
            p = doc["paper_x4"].get(ds, {}).get(paper_key) if factor == 4 and paper_key else None
            cells.append(fmt_quality(*p) if p else "—")
        return cells

    models = doc["models"]
    for factor in sorted({m["factor"] for m in models.values()}):
        rows.append(row("bicubic", factor, "bicubic", "bicubic"))
        for loss in ("pixel", "feat"):
            if loss == "feat" and factor == 4:
                rows.append(row("SRCNN (paper only)", factor, None, "SRCNN"))
            for name, m in sorted(models.items()):
                if m["factor"] == factor and m["loss"] == loss:
                    rows.append(row(f"`{name}` ({LOSS_LABELS[loss]})", factor, name, loss))
    return markdown_table(header, rows, "lr" + "rr" * len(datasets))


def sr_deltas(doc: dict[str, Any]) -> str:
    """Each model's gain over bicubic at its factor, the paper's feature-loss one beside it."""
    lines = []
    for ds, by_factor in doc["results"].items():
        p = doc["paper_x4"].get(ds)
        for key, r in by_factor.items():
            for name, v in r.items():
                if name == "bicubic":
                    continue
                line = (f"- {ds} {key}, `{name}`: {v['psnr'] - r['bicubic']['psnr']:+.2f} dB, "
                        f"SSIM {v['ssim'] - r['bicubic']['ssim']:+.4f}")
                if p and key == "x4":
                    loss = doc["models"][name]["loss"]
                    line += (f" (paper's {LOSS_LABELS[loss]}: {p[loss][0] - p['bicubic'][0]:+.2f}"
                             f" dB, SSIM {p[loss][1] - p['bicubic'][1]:+.4f})")
                lines.append(line)
    return "\n".join(lines)


def plot_sr(doc: dict[str, Any], path: Path) -> None:
    """PSNR and SSIM per method, ours solid and the paper's hatched, per dataset."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    datasets = list(doc["results"])
    methods = [(f"x{f}", name) for f in sorted({m["factor"] for m in doc["models"].values()})
               for name in ["bicubic", *sorted(n for n, m in doc["models"].items()
                                               if m["factor"] == f)]]
    width = 0.8 / (len(methods) + 4)
    for ax, metric, i in ((axes[0], "psnr", 0), (axes[1], "ssim", 1)):
        k = 0
        for key, name in methods:
            values = [doc["results"][ds].get(key, {}).get(name, {}).get(metric, np.nan)
                      for ds in datasets]
            ax.bar(np.arange(len(datasets)) + k * width, values, width, label=f"{name} {key}")
            k += 1
        for name in ("bicubic", "pixel", "SRCNN", "feat"):
            values = [doc["paper_x4"][ds][name][i] for ds in datasets]
            ax.bar(np.arange(len(datasets)) + k * width, values, width, hatch="//",
                   alpha=0.5, label=f"paper {name} x4")
            k += 1
        ax.set_xticks(np.arange(len(datasets)) + (k - 1) * width / 2, datasets)
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
        ax.set_ylim(20 if metric == "psnr" else 0.5, None)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle("Y-channel PSNR / SSIM (border = factor)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_sr(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate

    store = ModelStore(args.store)
    models = sr_models(store)
    if not models:
        raise ValueError(f"no super-resolution models in {args.store}")
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, Any]] = {}
    for ds in args.datasets.split(","):
        results[ds] = {}
        for factor in sorted({m["factor"] for m in models.values()}):
            r = evaluate(Path(args.data) / "sr" / ds, factor, args.store)
            results[ds][f"x{factor}"] = r
            for name, v in r.items():
                if name != "bicubic":
                    store.update_metrics(name, {f"{ds}_x{factor}": {"psnr": v["psnr"],
                                                                    "ssim": v["ssim"]}})
            print(f"{ds} x{factor}: " + ", ".join(f"{n} {v['psnr']:.2f}/{v['ssim']:.4f}"
                                                  for n, v in r.items()))
    doc = {"machine": machine(), "models": models, "results": results,
           "paper_x4": {ds: {k: list(v) for k, v in t.items()} for ds, t in PAPER_SR_X4.items()}}
    write_json(Path(args.docs) / "sr.json", doc)
    write_sr_docs(doc, Path(args.docs))
    return 0


def write_sr_docs(doc: dict[str, Any], docs: Path) -> None:
    plot_sr(doc, docs / "sr.png")
    write_text(docs / "sr.md", f"""# Super-resolution: PSNR / SSIM

Generated by `python -m train report sr`; do not edit by hand.

Protocol of the paper's Fig. 8 (from SRCNN): each HR image is cropped to a multiple of the
factor, downsampled with PIL's antialiased bicubic, upsampled by the method, rounded to uint8,
and compared on the BT.601 luma channel with a border of `factor` pixels shaved. Means over the
images of each set. Cells are PSNR (dB) / SSIM. The paper reports x4 only.

{sr_table(doc)}

Against bicubic at the same factor:

{sr_deltas(doc)}

The paper's feature-loss model gives up PSNR/SSIM against bicubic for sharper edges and texture;
PSNR and SSIM do not measure that sharpness, so look at the crops in
[gallery.md](gallery.md#super-resolution-crops-4).

![PSNR and SSIM per method](sr.png)
""")


# ----------------------------------------------------------------------------- style


def style_table(doc: dict[str, Any]) -> str:
    """One row per style: network vs Gatys at each iteration count, and the shipping check."""
    settings = doc["settings"]
    iterations = [str(i) for i in settings["iterations"]]
    header = ["style", "network", *(f"Gatys {i} it." for i in iterations), "unstyled photo",
              f"style loss ÷ photo's (max of {len(settings['check_images'])})", "shipped"]
    rows = []

    def cell(d: dict[str, float]) -> str:
        return f"{fmt_loss(d['content'])} / {fmt_loss(d['style'])} ({fmt_seconds(d['seconds'])})"

    for name, s in doc["styles"].items():
        r = s["summary"]

        check = s["check"]
        rows.append([f"`{name}`", cell(r["network"]), *(cell(r["gatys"][i]) for i in iterations),
                     f"— / {fmt_loss(r['unstyled']['style'])}", f"{check['max_ratio']:.3f}",
                     "yes" if check["passed"] else "**no**"])
    return markdown_table(header, rows, "l" + "r" * (len(header) - 2) + "l")


def style_legend(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    text = (f"Cells: content loss / style loss (seconds), λ-weighted as each model was trained, "
            f"on {', '.join(s['content'])} at {s['size']} px (longer side); Gatys et al. by "
            f"L-BFGS from {s['init']}, the same objective. Times: {machine_line(doc['machine'])}; "
            f"wall-clock, so compare them within a row. "
            f"A model ships only if its style loss is at most {s['threshold']} × that of the "
            f"unstyled photo on every one of {len(s['check_images'])} content images.")
    text += (" L-BFGS takes unit steps without a line search (train/gatys.py), so an "
             "iteration can raise its objective; each cell is the best image evaluated so far.")
    return text


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


def run_style(args: argparse.Namespace) -> int:
    from train.gatys import load_image, style_targets, stylize_by_optimisation
    from train.losses import feature_loss, style_loss, tv_loss
    from train.style_training import load_style_image
    from train.vgg import LossNetwork
    from train.vgg_weights import resolve

    torch.set_num_threads(args.threads)
    store = ModelStore(args.store)
    names = [m.name for m in store.manifests() if m.architecture == "style"
             and (not args.models or m.name in args.models.split(","))]
    if not names:
        raise ValueError(f"no style models in {args.store}")
    kind, state = resolve()
    vgg = LossNetwork(kind, state)
    data = Path(args.data)
    iterations = sorted(int(i) for i in args.iterations.split(","))
    content_names = args.content.split(",")
    check_paths = sorted((data / "content-images").glob("*.jpg"))
    docs = Path(args.docs)
    settings = {"content": content_names, "size": args.size, "iterations": iterations,
                "init": args.init, "threshold": args.threshold,
                "check_images": [p.stem for p in check_paths], "loss_network": kind}
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
        for content_name in content_names:
            photo = load_image(data / "content-images" / f"{content_name}.jpg", args.size)
            with torch.no_grad():
                seconds, _ = median_seconds(lambda net=net, photo=photo: net(photo), args.runs)
                out = net(photo)
            started = time.perf_counter()
            image, history = stylize_by_optimisation(
                photo, targets, vgg, iterations[-1], init=args.init, report_at=iterations,
                content_layer=cfg["content_layer"], style_layers=layers, **weights)
            log.info("%s on %s: Gatys %d iterations in %.0f s", name, content_name,
                     iterations[-1], time.perf_counter() - started)
            per_image[content_name] = {
                "shape": list(photo.shape[-2:]),
                "network": {**losses(out, photo), "seconds": seconds},
                "gatys": {str(h["iteration"]): {k: h[k] for k in ("content", "style", "tv",
                                                                  "seconds")}
                          for h in history},
                "unstyled": losses(photo, photo),
            }
            save_jpeg(out, docs / "style" / f"{name}_{content_name}_network.jpg")
            save_jpeg(image, docs / "style" / f"{name}_{content_name}_gatys{iterations[-1]}.jpg")
        ratios = {}
        for path in check_paths:
            photo = load_image(path, args.size)
            with torch.no_grad():
                styled = net(photo)
            ratios[path.stem] = losses(styled, photo)["style"] / losses(photo, photo)["style"]
        max_ratio = max(ratios.values())
        check = {"ratios": ratios, "max_ratio": max_ratio, "threshold": args.threshold,
                 "passed": max_ratio <= args.threshold, "size": args.size}
        summary = {"images": content_names, "size": args.size,
                   "network": mean_terms([r["network"] for r in per_image.values()]),
                   "gatys": {str(i): mean_terms([r["gatys"][str(i)] for r in per_image.values()])
                             for i in iterations},
                   "unstyled": mean_terms([r["unstyled"] for r in per_image.values()])}
        store.update_metrics(name, {"style_vs_gatys": summary, "style_check": check})
        styles[name] = {"summary": summary, "check": check, "per_image": per_image}
        print(f"{name}: network {summary['network']}, Gatys {summary['gatys']}, "
              f"max style-loss ratio {max_ratio:.3f} -> {'pass' if check['passed'] else 'FAIL'}")
    doc = {"machine": machine(), "settings": settings, "styles": styles}
    write_json(docs / "style.json", doc)
    write_style_docs(doc, docs)
    failed = [n for n, s in styles.items() if not s["check"]["passed"]]
    if failed:
        print(f"NOT SHIPPABLE (style loss not well below the photo's): {', '.join(failed)}")
    return 0


def write_style_docs(doc: dict[str, Any], docs: Path) -> None:
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

Generated by `python -m train report style`; do not edit by hand.

The idea of the paper's Figure 5: the feed-forward network minimises, in one pass, the objective
that Gatys et al. minimise by optimising the pixels. For each shipped style the network's output
and L-BFGS after {', '.join(map(str, iterations))} iterations are scored with the same loss
network ({kind}) and the same weights as that model's training (its manifest).
The unstyled photo's style loss is the bar a model has to clear to be shipped.

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


# ----------------------------------------------------------------------------- speed


def gpu_reference(path: Path = GPU_BENCH) -> dict[str, Any]:
    """Style-network latencies, batch 1, from `python -m bench model` on a GPU, and its machine."""
    doc = json.loads(path.read_text())
    ms: dict[str, dict[str, float]] = {}
    for r in doc["results"]:
        if r["network"] == "style" and r["batch"] == 1 and "latency_ms" in r:
            ms.setdefault(str(r["size"]), {})[r["path"]] = r["latency_ms"]
    return {"source": str(path.relative_to(REPO)), "machine": doc["machine"], "latency_ms": ms}


def gatys_timing(vgg: torch.nn.Module, content: torch.Tensor, style: torch.Tensor,
                 measured: int, totals: list[int]) -> dict[str, Any]:
    """Time `measured` L-BFGS iterations; totals beyond them are extrapolated from the median
    time of an iteration after the first (which also pays for the Gram targets and warm-up).
    The median, because other processes on a shared CPU make single iterations slow."""
    from train.gatys import stylize_by_optimisation

    _, history = stylize_by_optimisation(content, style, vgg, measured,
                                         report_at=range(1, measured + 1))
    t = {h["iteration"]: h["seconds"] for h in history}
    per_iteration = statistics.median(t[i] - t[i - 1] for i in range(2, measured + 1))
    return {"measured_iterations": measured, "first_iteration_s": t[1],
            "per_iteration_s": per_iteration,
            "totals": {str(n): {"seconds": t[n], "measured": True} if n in t else
                       {"seconds": t[1] + (n - 1) * per_iteration, "measured": False}
                       for n in totals}}


def speed_table(doc: dict[str, Any]) -> str:
    """The paper's Table 1 measured here: optimisation vs one forward pass, with speed-ups."""
    totals = doc["iterations"]
    header = ["image size", *(f"Gatys {n} it." for n in totals), "network, eager fp32",
              "network, service path", "speed-up (" + " / ".join(f"{n} it." for n in totals) + ")"]
    rows = []
    for size, r in doc["sizes"].items():
        cells = [f"{size}×{size}"]
        for n in totals:
            t = r["gatys"]["totals"][str(n)]
            cells.append(fmt_seconds(t["seconds"]) if t["measured"]
                         else f"≈{fmt_seconds(t['seconds'])} (est.)")
        eager = r["network"]["eager_fp32_s"]
        cells += [fmt_seconds(eager), fmt_seconds(r["network"]["service_s"]),
                  " / ".join(f"{r['gatys']['totals'][str(n)]['seconds'] / eager:,.0f}×"
                             for n in totals)]
        rows.append(cells)
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def reference_speed_table(doc: dict[str, Any]) -> str:
    """The paper's own figures and the GPU benchmark, each with its machine."""
    gpu = doc["gpu"]
    name = gpu["machine"]["gpu"]
    header = ["image size", f"paper: Gatys 100 / 300 / 500 it. ({PAPER_GPU})",
              f"paper: network ({PAPER_GPU})", f"{name}: eager fp32", f"{name}: fp16 CUDA graph"]
    rows = []
    for size in doc["sizes"]:
        p = doc["paper"].get(size, {})
        g = gpu["latency_ms"].get(size, {})
        rows.append([f"{size}×{size}",
                     " / ".join(f"{p[n]} s" for n in ("100", "300", "500")) if p else "—",
                     f"{p['network']} s" if p else "—",
                     f"{g['eager_fp32']:.2f} ms" if "eager_fp32" in g else "—",
                     f"{g['fp16_cuda_graph']:.2f} ms" if "fp16_cuda_graph" in g else "—"])
    return markdown_table(header, rows, "lrrrr")


def speed_legend(doc: dict[str, Any]) -> str:
    m = doc["gpu"]["machine"]
    measured = ", ".join(f"{s}: {r['gatys']['measured_iterations']}"
                         for s, r in doc["sizes"].items())
    return (f"Measured in one run on {machine_line(doc['machine'])}. Gatys: L-BFGS iterations "
            f"timed per size ({measured}); totals marked est. are extrapolated as first "
            f"iteration + (n − 1) × median time of the later ones. Network: `{doc['model']}`, "
            f"batch 1, median of {doc['runs']} runs; the service path is what the service runs "
            f"(uint8 in and out) on the execution path its measured policy chose for that size"
            f"{service_paths(doc)}. GPU figures: "
            f"`{doc['gpu']['source']}` ({m['gpu']}, torch {m['torch']}), batch 1.")


def service_paths(doc: dict[str, Any]) -> str:
    paths = {s: r["network"].get("service_path") for s, r in doc["sizes"].items()}
    if not all(paths.values()):
        return ""
    return " (" + ", ".join(f"{s}: `{p}`" for s, p in paths.items()) + ")"


def plot_speed(doc: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = list(doc["sizes"])
    x = [int(s) for s in sizes]
    for i, n in enumerate(doc["iterations"]):
        t = [doc["sizes"][s]["gatys"]["totals"][str(n)] for s in sizes]
        ax.plot(x, [e["seconds"] for e in t], "o-", color=f"C{i}", label=f"Gatys {n} it.")
        ax.plot([xi for xi, e in zip(x, t, strict=True) if not e["measured"]],
                [e["seconds"] for e in t if not e["measured"]], "o", mfc="white",
                color=f"C{i}")
    ax.plot(x, [doc["sizes"][s]["network"]["eager_fp32_s"] for s in sizes], "s-", color="k",
            label="network, eager fp32")
    ax.plot(x, [doc["sizes"][s]["network"]["service_s"] for s in sizes], "s--", color="grey",
            label="network, service path")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{s}²" for s in sizes])
    ax.set_ylabel("seconds (hollow: extrapolated)")
    ax.set_title(f"CPU: {doc['machine']['cpu']}, {doc['machine']['threads']} threads",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_speed(args: argparse.Namespace) -> int:
    from service.registry import Registry
    from train.gatys import load_image
    from train.vgg import LossNetwork
    from train.vgg_weights import resolve

    torch.set_num_threads(args.threads)
    store = ModelStore(args.store)
    styles = [m.name for m in store.manifests() if m.architecture == "style"]
    if not styles:
        raise ValueError(f"no style models in {args.store}")
    name = args.model or styles[0]
    sides = [int(s) for s in args.sizes.split(",")]
    registry = Registry(args.store, [name], "cpu", "float32", policy="measure",
                        policy_sizes=sides)
    (service_model,) = registry.load_all()
    net, manifest = service_model.module, service_model.manifest   # eager: the module itself
    torch.set_num_threads(args.threads)   # the policy may have chosen lanes of fewer threads
    kind, state = resolve()
    vgg = LossNetwork(kind, state)
    data = Path(args.data)
    totals = [int(n) for n in args.iterations.split(",")]
    measure = {int(k): int(v) for k, v in (p.split(":") for p in args.measure.split(","))}
    sizes: dict[str, Any] = {}
    for size in sides:
        def square(path: Path, size: int = size) -> torch.Tensor:
            return F.interpolate(load_image(path, size), size=(size, size), mode="bicubic",
                                 antialias=True, align_corners=False).clamp(0, 1)

        photo = square(data / "content-images" / "chicago.jpg")
        pixels = (photo[0] * 255).round().byte().permute(1, 2, 0).numpy()
        with torch.no_grad():
            eager, eager_runs = median_seconds(lambda photo=photo: net(photo), args.runs)
        service, service_runs = median_seconds(lambda p=pixels: service_model.run([p]), args.runs)
        gatys = gatys_timing(vgg, photo, square(data / "styles" / "udnie.jpg"),
                             measure.get(size, 3), totals)
        sizes[str(size)] = {"gatys": gatys, "network": {
            "eager_fp32_s": eager, "service_s": service, "eager_runs_s": eager_runs,
            "service_runs_s": service_runs,
            "service_path": service_model.policy.choose(size, size).path}}
        print(f"{size}: network {eager:.3f} s eager, {service:.3f} s service; Gatys "
              f"{gatys['per_iteration_s']:.2f} s/iteration over {gatys['measured_iterations']}")
    doc = {"machine": machine(), "model": name, "runs": args.runs, "iterations": totals,
           "loss_network": kind,
           "sizes": sizes, "gpu": gpu_reference(), "paper": PAPER_SPEED}
    speed_cpu = {"machine": doc["machine"], "measured_with": name, "batch": 1,
                 "eager_fp32_s": {s: r["network"]["eager_fp32_s"] for s, r in sizes.items()},
                 "service_s": {s: r["network"]["service_s"] for s, r in sizes.items()}}
    for m in store.manifests():  # same architecture and options: the same speed
        if m.architecture == manifest.architecture and m.options == manifest.options:
            store.update_metrics(m.name, {"speed_cpu": speed_cpu})
    write_json(Path(args.docs) / "speed.json", doc)
    write_speed_docs(doc, Path(args.docs))
    return 0


def write_speed_docs(doc: dict[str, Any], docs: Path) -> None:
    plot_speed(doc, docs / "speed.png")
    kind = doc["loss_network"]
    write_text(docs / "speed.md", f"""# Speed: optimisation against one forward pass

Generated by `python -m train report speed`; do not edit by hand.

The paper's Table 1 on this machine: Gatys et al.'s optimisation (L-BFGS from noise, the style
objective with the loss network {kind}) for 100, 300 and 500 iterations against one pass of the
style network, on square images.

{speed_legend(doc)}

{speed_table(doc)}

For reference, the paper's figures and the GPU benchmark (not measured in this run):

{reference_speed_table(doc)}

![seconds by image size](speed.png)
""")


# ----------------------------------------------------------------------------- gallery


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
                                 [[r["image"], *(img(t["path"], t["label"]) for t in r["tiles"])]
                                  for r in group], "l" * (len(labels) + 1))]
    return "\n\n".join(parts)


def run_gallery(args: argparse.Namespace) -> int:
    import shutil

    from PIL import Image

    from train.data import load_rgb
    from train.evaluate import hr_and_lr, upsample_bicubic, upsample_net

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
        entry = {"name": m.name, "outputs": [], "painting": save(
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
                tiles.append({"label": label, "path": save(crop, rel, quality=95)})
            index["sr"].append({"image": spec, "factor": factor, "box": [top, left, args.crop],
                                "tiles": tiles})
    index["bytes"] = sum(p.stat().st_size for p in out.rglob("*.jpg"))
    write_json(out / "index.json", index)
    write_gallery_docs(index, docs)
    print(f"gallery: {len(list(out.rglob('*.jpg')))} images, {index['bytes'] / 2**20:.2f} MiB")
    return 0


def write_gallery_docs(index: dict[str, Any], docs: Path) -> None:
    write_text(docs / "gallery.md", f"""# Gallery

Generated by `python -m train report gallery`; do not edit by hand. Every shipped style model on
the content images and a few photos (shorter side {index['size']} px), beside its painting;
then {index['crop']}-pixel crops of super-resolved Set5/Set14 images (shown ×{index['zoom']},
nearest neighbour), where the HR image has the most detail. {index['bytes'] / 2**20:.1f} MiB in all.

{gallery_markdown(index)}
""")


# ----------------------------------------------------------------------------- README


def replace_block(text: str, name: str, body: str) -> str:
    """Replace what lies between the BEGIN/END markers of block `name`, markers kept."""
    pattern = re.compile(rf"(<!-- BEGIN generated:{re.escape(name)} -->)(.*?)"
                         rf"(<!-- END generated:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- BEGIN/END generated:{name} --> markers")
    return pattern.sub(lambda m: f"{m.group(1)}\n{body.strip()}\n{m.group(3)}", text, count=1)


def read_block(text: str, name: str) -> str | None:
    m = re.search(rf"<!-- BEGIN generated:{re.escape(name)} -->(.*?)"
                  rf"<!-- END generated:{re.escape(name)} -->", text, re.S)
    return m.group(1) if m else None


def load_doc(docs: Path, rel: str) -> dict[str, Any] | None:
    path = docs / rel
    return json.loads(path.read_text()) if path.is_file() else None


def readme_blocks(docs: Path, bench_results: Path = bench_summary.RESULTS) -> dict[str, str]:
    """The body of each block whose source document exists."""
    def load(rel: str) -> dict[str, Any] | None:
        return load_doc(docs, rel)

    blocks = {}
    if sr := load("sr.json"):
        blocks["sr-table"] = (
            "Y-channel PSNR (dB) / SSIM, border = factor; paper = Johnson et al. Fig. 8 (×4). "
            "From `python -m train report sr`, details in [docs/sr.md](docs/sr.md).\n\n"
            + sr_table(sr))
    if style := load("style.json"):
        blocks["style-table"] = (style_legend(style) + " Details in [docs/style.md]"
                                 "(docs/style.md).\n\n" + style_table(style))
    if speed := load("speed.json"):
        blocks["speed-table"] = (speed_legend(speed) + " Details in [docs/speed.md]"
                                 "(docs/speed.md).\n\n" + speed_table(speed) + "\n\n"
                                 + reference_speed_table(speed))
    if bench := bench_summary.readme_block(bench_results):
        blocks["bench"] = bench
    if gallery := load("gallery/index.json"):
        blocks["gallery"] = (gallery_markdown(gallery, prefix="docs/", width=96)
                             + "\n\nLarger: [docs/gallery.md](docs/gallery.md).")
    return blocks


PAGES = {"sr.json": write_sr_docs, "style.json": write_style_docs,
         "speed.json": write_speed_docs, "gallery/index.json": write_gallery_docs}


def run_readme(args: argparse.Namespace) -> int:
    """README blocks and docs pages from the JSON: a change of format needs no new measurement."""
    docs = Path(args.docs)
    if args.pages:
        for rel, write in PAGES.items():
            if doc := load_doc(docs, rel):
                write(doc, docs)
    path = Path(args.readme)
    text = path.read_text()
    for name, body in readme_blocks(Path(args.docs), Path(args.bench_results)).items():
        text = replace_block(text, name, body)
        print(f"README: {name}")
    path.write_text(text)
    return 0


# ----------------------------------------------------------------------------- CLI

RUNS = {"sr": run_sr, "style": run_style, "speed": run_speed, "gallery": run_gallery,
        "readme": run_readme}


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report", required=True)
    helps = {"sr": "PSNR/SSIM of bicubic and every SR model on Set5/Set14, beside the paper's",
             "style": "each style network against Gatys et al. at 50/100/300 iterations",
             "speed": "the paper's Table 1 on this machine: optimisation vs forward pass",
             "gallery": "docs/gallery: every style on the content images, SR crops",
             "readme": "rewrite README.md's generated blocks from docs/*.json"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--docs", default=str(DOCS), help="output folder")
        if name == "readme":
            p.add_argument("--readme", default=str(README), help="README to update")
            p.add_argument("--pages", action=argparse.BooleanOptionalAction, default=True,
                           help="also rewrite docs/*.md and plots from the JSON")
            p.add_argument("--bench-results", default=str(bench_summary.RESULTS),
                           help="the benchmarks' JSON, quoted in the bench block")
            continue
        p.add_argument("--store", default=str(SHIPPED_ROOT), help="model store folder")
        p.add_argument("--data", default=str(DATA), help="the shared data folder")
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
        if name == "sr":
            p.add_argument("--datasets", default="Set5,Set14", help="folders under DATA/sr")
        if name == "style":
            p.add_argument("--models", default="", help="comma-separated styles (default: all)")
            p.add_argument("--content", default="chicago",
                           help="content images compared with Gatys (comma-separated stems)")
            p.add_argument("--size", type=int, default=256, help="longer side of the images")
            p.add_argument("--iterations", default="50,100,300", help="Gatys reports")
            p.add_argument("--init", choices=("noise", "content"), default="noise",
                           help="Gatys' starting image (the paper: noise)")
            p.add_argument("--threshold", type=float, default=0.5,
                           help="ship only if style loss <= this x the unstyled photo's")
            p.add_argument("--runs", type=int, default=5, help="forward passes timed")
        if name == "speed":
            p.add_argument("--model", default="", help="style model timed (default: first)")
            p.add_argument("--sizes", default="256,512,1024", help="square image sides")
            p.add_argument("--iterations", default="100,300,500", help="Gatys totals reported")
            p.add_argument("--measure", default="256:100,512:5,1024:3",
                           help="SIZE:N iterations actually run per size; more are extrapolated")
            p.add_argument("--runs", type=int, default=5, help="forward passes timed")
        if name == "gallery":
            p.add_argument("--photos", default="kodak24/kodim03.jpg,kodak24/kodim21.jpg,"
                           "kodak24/kodim23.jpg", help="extra photos, relative to DATA/photos")
            p.add_argument("--size", type=int, default=320, help="shorter side of the pictures")
            p.add_argument("--sr-images", default="Set5/butterfly,Set5/bird,Set14/zebra,"
                           "Set14/comic", help="SR crops: DATA/sr/<set>/<stem>")
            p.add_argument("--crop", type=int, default=96, help="side of the SR crops (HR px)")
            p.add_argument("--zoom", type=int, default=2, help="nearest-neighbour zoom of crops")


def main(args: argparse.Namespace) -> int:
    return RUNS[args.report](args)
