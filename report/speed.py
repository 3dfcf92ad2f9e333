"""`python -m report speed`: the paper's Table 1 on this machine, optimisation vs forward pass.

The network is timed both eagerly and the way the service runs it; the paper's figures and a
GPU benchmark are quoted beside, each with its machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from model_store import ModelStore
from report.common import (
    REPO,
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

if TYPE_CHECKING:
    from train.vgg import LossNetwork

# The paper's speed table (seconds on a GTX Titan X): Gatys et al. at 100/300/500 L-BFGS
# iterations, and one forward pass of the style network.
PAPER_SPEED: dict[str, dict[str, float]] = {
    "256": {"100": 3.17, "300": 9.52, "500": 15.86, "network": 0.015},
    "512": {"100": 10.97, "300": 32.91, "500": 54.85, "network": 0.05},
    "1024": {"100": 42.89, "300": 128.66, "500": 214.44, "network": 0.21},
}
PAPER_GPU = "NVIDIA GTX Titan X"
GPU_BENCH = REPO / "bench" / "results" / "model-cuda-h200.json"


def gpu_reference(path: Path = GPU_BENCH) -> dict[str, Any]:
    """Style-network latencies, batch 1, from `python -m bench model` on a GPU, and its machine."""
    doc = json.loads(path.read_text())
    ms: dict[str, dict[str, float]] = {}
    for r in doc["results"]:
        if r["network"] == "style" and r["batch"] == 1 and "latency_ms" in r:
            ms.setdefault(str(r["size"]), {})[r["path"]] = r["latency_ms"]
    return {"source": str(path.relative_to(REPO)), "machine": doc["machine"], "latency_ms": ms,
            "service_paths": doc.get("service_paths", [])}


def gatys_timing(vgg: LossNetwork, content: torch.Tensor, style: torch.Tensor,
                 measured: int, totals: list[int], style_weight: float) -> dict[str, Any]:
    """Time `measured` L-BFGS iterations; totals beyond them are extrapolated from the median
    time of an iteration after the first (which also pays for the Gram targets and warm-up).
    The median, because other processes on a shared CPU make single iterations slow."""
    from train.gatys import stylize_by_optimisation

    _, history = stylize_by_optimisation(content, style, vgg, measured,
                                         style_weight=style_weight,
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
    """The paper's own figures, and the GPU benchmark's fastest path of those the service runs,
    each with its machine (a GPU run that records no service paths is left out)."""
    gpu = doc["gpu"]
    served = set(gpu.get("service_paths", []))
    header = ["image size", f"paper: Gatys 100 / 300 / 500 it. ({PAPER_GPU})",
              f"paper: network ({PAPER_GPU})"]
    if served:
        header.append(f"{gpu['machine']['gpu']}: the service's fastest path, batch 1")
    rows = []
    for size in doc["sizes"]:
        p = doc["paper"].get(size, {})
        row = [f"{size}×{size}", " / ".join(f"{p[n]} s" for n in ("100", "300", "500"))
               if p else "—", f"{p['network']} s" if p else "—"]
        if served:
            g = {path: ms for path, ms in gpu["latency_ms"].get(size, {}).items()
                 if path in served}
            best = min(g, key=g.__getitem__) if g else None
            row.append(f"`{best}` {g[best]:.2f} ms" if best else "—")
        rows.append(row)
    return markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def speed_legend(doc: dict[str, Any]) -> str:
    m = doc["gpu"]["machine"]
    measured = ", ".join(f"{s}: {r['gatys']['measured_iterations']}"
                         for s, r in doc["sizes"].items())
    return (f"Measured in one run on {machine_line(doc['machine'])}. Gatys: L-BFGS iterations "
            f"timed per size ({measured}); totals marked est. are extrapolated as first "
            f"iteration + (n − 1) × median time of the later ones. Network: `{doc['model']}`, "
            f"batch 1, median of {doc['runs']} runs; the service path is what the service runs "
            f"(uint8 in and out) on the execution path its measured policy chose for that size"
            f"{service_paths(doc)}. "
            + (f"GPU figures: `{doc['gpu']['source']}` ({m['gpu']}, torch {m['torch']}), "
               f"batch 1, on the paths the service runs." if doc["gpu"].get("service_paths")
               else "GPU: not yet measured on the paths the service runs (`bash bench/gpu.sh`)."))


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


def run(args: argparse.Namespace) -> int:
    """Time Gatys et al. and one style model per size; write docs/speed.* and its metrics."""
    from service.registry import Registry
    from train.gatys import load_image
    from train.vgg import LossNetwork
    from train.vgg_weights import resolve

    torch.set_num_threads(args.threads)
    store = ModelStore(args.store)
    styles = style_networks(store)
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
            eager, eager_runs = median_seconds(functools.partial(net, photo), args.runs)
        service, service_runs = median_seconds(functools.partial(service_model.run, [pixels]),
                                                args.runs)
        gatys = gatys_timing(vgg, photo, square(data / "styles" / "udnie.jpg"),
                             measure.get(size, 3), totals,
                             manifest.training["config"]["style_weight"])
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
    write_page(doc, Path(args.docs))
    return 0


def write_page(doc: dict[str, Any], docs: Path) -> None:
    plot_speed(doc, docs / "speed.png")
    kind = doc["loss_network"]
    write_text(docs / "speed.md", f"""# Speed: optimisation against one forward pass

Generated by `python -m report speed`; do not edit by hand.

The paper's Table 1 on this machine: Gatys et al.'s optimisation (L-BFGS from noise, the style
objective with the loss network {kind}) for 100, 300 and 500 iterations against one pass of the
style network, on square images.

{speed_legend(doc)}

{speed_table(doc)}

For reference, the paper's figures and the GPU benchmark (not measured in this run):

{reference_speed_table(doc)}

![seconds by image size](speed.png)
""")


