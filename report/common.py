"""What the documents share: where they go, number formats, markdown tables, the machine caption.

Each measurement writes docs/<name>.md (table, plot, notes), docs/<name>.json (every figure, the
machine it was measured on) and docs/<name>.png, and stores its figures in the manifests of the
models it measured, so that a model carries its own results.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.machine import describe
from model_store import ModelStore

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"


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
    info = describe()
    info["load_average"] = round(os.getloadavg()[0], 2)
    return info


def machine_line(m: dict[str, Any]) -> str:
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    text = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {threads}"
    if m.get("gpu"):
        text += f", {m['gpu']}"
    elif "native_bf16" in m:
        text += ", native bf16" if m["native_bf16"] else ", no native bf16, so fp32"
    if "load_average" in m:
        text += f" (1-min load average {m['load_average']} at the end of the run"
        if m["load_average"] > m["threads"] + 0.5:   # more than this run's own threads
            text += ": other jobs shared the CPU, so the times are inflated"
        text += ")"
    return text


def style_networks(store: ModelStore, only: str = "") -> list[str]:
    """The store's single-style networks (those named in the comma list `only`, when given);
    ValueError when there are none."""
    names = [m.name for m in store.manifests() if m.architecture == "style"
             and (not only or m.name in only.split(","))]
    if not names:
        raise ValueError(f"no style models in {store.root}")
    return names


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


def pyplot():
    """matplotlib without a display; imported late so `python -m report` starts fast."""
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
