"""`python -m report sr`: PSNR/SSIM of bicubic and every SR model beside the paper's Fig. 8.

The table builders are pure functions of the JSON document, so tests check them on small
hand-made inputs without running any network.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store import ModelStore
from report.common import fmt_quality, machine, markdown_table, pyplot, write_json, write_text
from train.degrade import Degradation

# The paper's x4 super-resolution means (PSNR dB, SSIM), as printed in its Fig. 8 (ECCV 2016
# camera-ready).
PAPER_SR_X4: dict[str, dict[str, tuple[float, float]]] = {
    "Set5": {"bicubic": (28.43, 0.8114), "pixel": (28.40, 0.8205), "SRCNN": (30.48, 0.8628),
             "feat": (27.09, 0.7680)},
    "Set14": {"bicubic": (25.99, 0.7301), "pixel": (25.75, 0.6994), "SRCNN": (27.49, 0.7503),
              "feat": (24.99, 0.6731)},
}
LOSS_LABELS = {"pixel": "pixel loss", "feat": "feature loss"}
DEGRADATIONS: dict[Degradation, str] = {"bicubic": "PIL bicubic",
                                        "paper": "paper's blur + bicubic"}


def sr_models(store: ModelStore) -> dict[str, dict[str, Any]]:
    """{name: {"factor", "loss", "degradation"}} of every SR model in the store, from its
    training config (a model trained before --degradation existed had the paper's)."""
    return {m.name: {"factor": m.factor,
                     "loss": m.training.get("config", {}).get("loss", "feat"),
                     "degradation": m.training.get("config", {}).get("degradation", "paper")}
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


def trained_on(doc: dict[str, Any]) -> str:
    """One sentence: which models were trained on which degradation."""
    by: dict[Degradation, list[str]] = {}
    for name, m in sorted(doc["models"].items()):
        by.setdefault(m["degradation"], []).append(f"`{name}`")
    return "trained on " + "; ".join(f"{DEGRADATIONS[d]}: {', '.join(names)}"
                                     for d, names in by.items()) + "."


def degradation_table(doc: dict[str, Any]) -> str:
    """Every method on LR inputs made both ways, beside the degradation it was trained on."""
    datasets = list(doc["results"])
    header = ["method", "factor", "trained on"] + [f"{ds}, LR by {DEGRADATIONS[d]}"
                                                  for ds in datasets for d in DEGRADATIONS]
    rows = []
    for factor in sorted({m["factor"] for m in doc["models"].values()}):
        names = ["bicubic", *sorted(n for n, m in doc["models"].items() if m["factor"] == factor)]
        for name in names:
            m = doc["models"].get(name)
            cells = [f"`{name}`" if m else name, f"×{factor}",
                     DEGRADATIONS[m["degradation"]] if m else "—"]
            for ds in datasets:
                for d in DEGRADATIONS:
                    by = doc["results"] if d == "bicubic" else doc.get("results_paper", {})
                    r = by.get(ds, {}).get(f"x{factor}", {}).get(name)
                    cells.append(fmt_quality(r["psnr"], r["ssim"]) if r else "—")
            rows.append(cells)
    return markdown_table(header, rows, "lrl" + "r" * (len(header) - 3))


def sharpness_table(doc: dict[str, Any]) -> str:
    """Gradient energy of each method's luma over the HR image's (1.00: as sharp as the
    original), on the standard inputs."""
    datasets = list(doc["results"])
    rows = []
    for factor in sorted({m["factor"] for m in doc["models"].values()}):
        for name in ["bicubic", *sorted(n for n, m in doc["models"].items()
                                        if m["factor"] == factor)]:
            m = doc["models"].get(name)
            label = f"`{name}` ({LOSS_LABELS[m['loss']]})" if m else name
            cells = [label, f"×{factor}"]
            for ds in datasets:
                r = doc["results"][ds].get(f"x{factor}", {}).get(name, {})
                cells.append(f"{r['sharpness']:.2f}" if "sharpness" in r else "—")
            rows.append(cells)
    return markdown_table(["method", "factor", *datasets], rows, "lr" + "r" * len(datasets))


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


def run(args: argparse.Namespace) -> int:
    """Evaluate every SR model; write docs/sr.{json,md,png} and each model's metrics."""
    from train.evaluate import evaluate, metric_key

    store = ModelStore(args.store)
    models = sr_models(store)
    if not models:
        raise ValueError(f"no super-resolution models in {args.store}")
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, dict[str, Any]]] = {d: {} for d in DEGRADATIONS}
    for ds in args.datasets.split(","):
        for d in DEGRADATIONS:
            results[d][ds] = {}
            for factor in sorted({m["factor"] for m in models.values()}):
                r = evaluate(Path(args.data) / "sr" / ds, factor, args.store, degradation=d)
                results[d][ds][f"x{factor}"] = r
                for name, v in r.items():
                    if name != "bicubic":
                        store.update_metrics(name, {metric_key(ds, factor, d): {
                            k: v[k] for k in ("psnr", "ssim", "sharpness")}})
                scores = ", ".join(f"{n} {v['psnr']:.2f}/{v['ssim']:.4f}/{v['sharpness']:.2f}"
                                   for n, v in r.items())
                print(f"{ds} x{factor}, LR by {DEGRADATIONS[d]}: {scores}")
    doc = {"machine": machine(), "models": models, "results": results["bicubic"],
           "results_paper": results["paper"],
           "paper_x4": {ds: {k: list(v) for k, v in t.items()} for ds, t in PAPER_SR_X4.items()}}
    write_json(Path(args.docs) / "sr.json", doc)
    write_page(doc, Path(args.docs))
    return 0


def write_page(doc: dict[str, Any], docs: Path) -> None:
    plot_sr(doc, docs / "sr.png")
    write_text(docs / "sr.md", f"""# Super-resolution: PSNR / SSIM

Generated by `python -m report sr`; do not edit by hand.

Protocol of the paper's Fig. 8 (from SRCNN): each HR image is cropped to a multiple of the
factor, downsampled with PIL's antialiased bicubic, upsampled by the method, rounded to uint8,
and compared on the BT.601 luma channel with a border of `factor` pixels shaved. Means over the
images of each set. Cells are PSNR (dB) / SSIM. The paper reports x4 only.

{sr_table(doc)}

Against bicubic at the same factor:

{sr_deltas(doc)}

The paper's feature-loss model gives up PSNR/SSIM against bicubic for sharper edges and texture.
PSNR and SSIM do not measure that sharpness; the gradient energy of the output's luma over the
HR image's does (1.00: as much edge and texture as the original; standard inputs, border shaved):

{sharpness_table(doc)}

The crops are in [gallery.md](gallery.md#super-resolution-crops-4).

## Both degradations

How the LR input is made matters as much as the network. The table above makes it as `train
eval` and every user who shrinks a photo do: PIL's antialiased bicubic. The paper (§4.2) blurs
with a Gaussian of σ = 1 and downsamples bicubically without antialiasing
(`python -m train superres --degradation paper`, `python -m train eval --degradation paper`).
Each method on both, beside the degradation it was trained on:

{degradation_table(doc)}

![PSNR and SSIM per method](sr.png)
""")


