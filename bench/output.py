"""How a benchmark ends: its JSON written, a PNG of it beside, a last word on the terminal.

One figure style for all: matplotlib's Agg backend (no display needed), the machine and its
load as the caption (a timing means little without them), 110 dpi. matplotlib is optional:
without it the JSON is still written."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.machine import caption


def write_json(path: Path, result: dict) -> None:
    """Atomically: a partial result survives an interrupted run."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def figure(out: Path, result: dict, heading: str = "", **subplots: Any) -> Iterator[Any]:
    """The axes of `plt.subplots(**subplots)` to draw on; when the block ends, the figure
    captioned "`heading` on <machine>" (or the machine alone) and saved to `out`. ImportError
    without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield axes
        fig.suptitle(f"{heading} on {caption(result)}" if heading else caption(result),
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)


def by_concurrency(ax: Any, title: str, unit: str, legend_size: int) -> None:
    """Label `ax` as a measure (`unit`) against the number of closed-loop clients."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)


def finish(out: Path, result: dict, plot: Callable[[dict, Path], None], *lines: str) -> int:
    """The end of a benchmark's main: `result` to `out`, `plot` of it to the .png beside it,
    `lines` printed, then what was written. The exit code: 0."""
    write_json(out, result)
    png = out.with_suffix(".png")
    try:
        plot(result, png)
        wrote = f"wrote {out} and {png}"
    except ImportError:
        wrote = f"wrote {out} (no plot: matplotlib is not installed)"
    for line in lines:
        print(line)
    print(wrote)
    return 0
