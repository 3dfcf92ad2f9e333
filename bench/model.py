"""`python -m bench model`: raw forward latency/throughput of the networks per execution path.

For each network (style, sr_x4, sr_x8: the shipped weights when the store has them), output
size and batch, every execution path is timed in the same rounds as the baseline, eager fp32
NCHW under no_grad as the reference implementations run it: the paths take turns, so load from
elsewhere on the machine falls on all of them alike, and speed-ups are ratios within one run.
Inputs are real photographs (the super-resolution networks get them downscaled by the factor);
each path's output is compared with float32 on the CPU, in grey levels of 255 after rounding,
the way the service encodes it.

`service_path` marks, per cell, the path the service's policy (service/policy.py) would pick
from its own candidates by the same rule: the fastest within one grey level of float32. On
CUDA those candidates are the service's own runners (`service.execution.cuda_paths`, named as
there: `fp16` is the default layout, `fp16_channels_last` the other, `..._graphs` replays CUDA
graphs padded to the batch), timed with their input copy and output clone; besides them
`eager_fp32` (the baseline), `fp16_cuda_graph` (a bare graph replay of fp16, no copies) and
`compile_fp16`.
Lanes rows: single-image forwards running concurrently on a share of the threads each (what
the service's CPU batcher can do), against one at a time on all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench.machine import describe, load_average, wait_until_quiet
from bench.output import figure, finish, write_json
from model_store import data_root
from model_store.onnx_export import onnx_bytes
from nets.architectures import build
from nets.device import native_bf16
from service.execution import (
    ExportedRunner,
    OnnxRunner,
    OpenVinoRunner,
    cuda_paths,
    cuda_runner,
)
from service.rewrite import rewrite

# The shipped models' architectures (the model store records the same options).
NETWORKS: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "style": ("udnie", "style", {"norm": "instance", "upsample": "resize_conv",
                                 "padding": "reflect"}, 1),
    "sr_x4": ("sr_x4", "superres", {"factor": 4, "norm": "none", "upsample": "resize_conv",
                                     "padding": "reflect", "residual": True}, 4),
    "sr_x8": ("sr_x8", "superres", {"factor": 8, "norm": "none", "upsample": "resize_conv",
                                     "padding": "reflect", "residual": True}, 8),
}
CPU_PATHS = ["eager_fp32", "channels_last", "inference_mode", "bf16_autocast", "compile", "onnx",
             "openvino", "rewrite", "onnx_rewrite", "openvino_rewrite"]
EXPORTED = ["onnx", "openvino", "onnx_rewrite", "openvino_rewrite"]   # CPU, from the ONNX export
# What the service chooses from (service/execution.py), by device.
SERVICE_CANDIDATES = {"cpu": ["inference_mode", "rewrite", "onnx_rewrite", "openvino_rewrite",
                              "bf16_autocast"],
                      "cuda": list(cuda_paths("auto"))}
CUDA_PATHS = ["eager_fp32", *SERVICE_CANDIDATES["cuda"], "fp16_cuda_graph", "compile_fp16"]
IMAGES = data_root() / "content-images"
MAX_LEVELS = 1.0
SETTLE_S = 0.05          # CPU: pause before each timed call (see time_rounds)
Runner = Callable[[], torch.Tensor]
Exported = Callable[[torch.Tensor, int], Runner]   # (x, threads or 0 for all) -> runner


def load_network(name: str, device: torch.device) -> tuple[nn.Module, str]:
    """The shipped weights of `name`'s model if the store has them, else a seeded random init
    (the cost is the same; only the error figures need trained weights)."""
    stored, arch, options, _ = NETWORKS[name]
    try:
        from model_store import SHIPPED_ROOT, ModelStore
        net, _ = ModelStore(SHIPPED_ROOT).load(stored)
        source = f"model_store:{stored}"
    except Exception:  # no shipped store here: same architecture, random weights
        torch.manual_seed(0)
        net, source = build(arch, options), "random"
    return net.eval().to(device), source


def photos(folder: Path, side: int, count: int) -> torch.Tensor:
    """`count` photos, centre-cropped square, resized to `side`, as (N, 3, side, side) in
    [0, 1]; smooth synthetic images where the folder has none."""
    files = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png")) if folder.is_dir() else []
    out = []
    for i in range(count):
        if files:
            img = Image.open(files[i % len(files)]).convert("RGB")
            s = min(img.size)
            img = img.crop(((img.width - s) // 2, (img.height - s) // 2,
                            (img.width + s) // 2, (img.height + s) // 2))
            a = np.asarray(img.resize((side, side), Image.Resampling.BICUBIC), np.float32)
        else:
            yy, xx = np.mgrid[0:side, 0:side] / side
            a = 255 * np.stack([np.sin(6 * xx + i) ** 2, yy, np.cos(5 * yy * xx) ** 2], -1,
                               dtype=np.float32)
        out.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) / 255)
    return torch.stack(out)


def make_runner(path: str, net: nn.Module, x: torch.Tensor, exported: dict[str, Exported]
                ) -> Runner:
    """A zero-argument callable running one forward pass of `x` the way `path` describes."""
    dev = x.device
    if dev.type == "cuda" and path in SERVICE_CANDIDATES["cuda"]:
        runner = cuda_runner(cuda_paths()[path], net, max_batch=x.shape[0])
        return lambda: runner(x)
    fp32 = copy.deepcopy(net).float()
    if "rewrite" in path:
        fp32 = rewrite(fp32)
    cl = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    if path == "eager_fp32":
        return no_grad(fp32, x)
    if path == "channels_last":
        return no_grad(cl, xcl)
    if path in ("inference_mode", "rewrite"):
        return inference(fp32, x)
    if path == "bf16_autocast":
        return inference(fp32, x, autocast=torch.bfloat16)
    if path == "compile":
        torch._dynamo.reset()   # one compiled shape per cell; never hit the recompile limit
        return inference(torch.compile(fp32, dynamic=False, options={"freezing": True}), x)
    if path in EXPORTED:
        return exported[path](x, 0)
    half, xh = fp32.half(), x.half()     # fp16 in the default layout, as the service names it
    if path == "compile_fp16":
        torch._dynamo.reset()
        return inference(torch.compile(half, mode="max-autotune-no-cudagraphs", dynamic=False),
                         xh)
    if path == "fp16_cuda_graph":
        return cuda_graph_runner(half, xh)
    raise ValueError(f"unknown path {path!r}")


def no_grad(net: nn.Module, x: torch.Tensor) -> Runner:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return net(x)
    return run


def inference(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              autocast: torch.dtype | None = None) -> Runner:
    cast = torch.autocast(x.device.type, dtype=autocast) if autocast else None

    def run() -> torch.Tensor:
        with torch.inference_mode(), cast or contextlib.nullcontext():
            return net(x)
    return run


def cuda_graph_runner(net: nn.Module, x: torch.Tensor) -> Runner:
    """Capture one forward into a CUDA graph; replaying it removes the per-kernel launch cost."""
    static_in = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            net(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = net(static_in)

    def run() -> torch.Tensor:
        graph.replay()
        return static_out
    return run


def export_paths(net: nn.Module, paths: list[str]) -> dict[str, Exported]:
    """The exported paths that can run here, on the service's own runners: the network and its
    rewrite are each exported once, and every runner of that export (one per input and thread
    count) shares it."""
    exports: dict[bool, bytes] = {}
    out: dict[str, Exported] = {}
    for path in paths:
        rewritten = path.endswith("_rewrite")
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if rewritten not in exports:
                exports[rewritten] = onnx_bytes(rewrite(net) if rewritten else net)
            runner = (OnnxRunner if path.startswith("onnx") else OpenVinoRunner)(
                exports[rewritten])
            out[path] = functools.partial(exported_runner, runner)
    return out


def exported_runner(runner: ExportedRunner, x: torch.Tensor, threads: int) -> Runner:
    """One forward pass of `x` on `runner`, on `threads` threads (0: all)."""
    threads = threads or torch.get_num_threads()
    return lambda: runner.run(x, threads=threads)


def levels(y: torch.Tensor) -> torch.Tensor:
    return (y.float().cpu().clamp(0, 1) * 255).round()


def time_rounds(runners: dict[str, Runner], device: torch.device, min_s: float, min_runs: int,
                max_runs: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, the runners taking turns (rotating the order) until each
    has `min_runs` and the round-robin has lasted `min_s` per runner, or `max_runs`. On a CPU
    each call starts after a short pause: the thread pools of the previous path (OpenMP's,
    ONNX Runtime's) spin on for a while after it returns and would slow the next one."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while r < max_runs and (r < min_runs or time.perf_counter() - start < min_s * len(names)):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if device.type == "cpu":
                time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            runners[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0)
        r += 1
    return times


def measure_cell(network: str, net: nn.Module, size: int, batch: int, paths: list[str],
                 device: torch.device, exported: dict[str, Exported], args: argparse.Namespace
                 ) -> list[dict]:
    """All paths for one (network, output size, batch): interleaved timing, errors, speed-ups."""
    factor = NETWORKS[network][3]
    x_cpu = photos(Path(args.images), size // factor, batch)
    x = x_cpu.to(device)
    ref: torch.Tensor | None = None
    if device.type != "cpu" or "eager_fp32" not in paths:
        with torch.no_grad():
            ref = levels(copy.deepcopy(net).float().cpu()(x_cpu))
    rows: dict[str, dict] = {}
    runners: dict[str, Runner] = {}
    lanes = int(args.lanes) if args.lanes and batch == 1 and device.type == "cpu" else 0
    if lanes and torch.get_num_threads() % lanes == 0 and torch.get_num_threads() > 1:
        lane_paths = [f"{p}@{lanes}lanes" for p in paths
                      if p == "eager_fp32" or p in SERVICE_CANDIDATES["cpu"]]
    else:
        lane_paths = []
    pool = ThreadPoolExecutor(max_workers=max(1, lanes), thread_name_prefix="lane")
    for path in paths + lane_paths:
        row: dict = {"network": network, "path": path, "size": size, "batch": batch}
        rows[path] = row
        try:
            t0 = time.perf_counter()
            if "@" in path:
                row.update(lanes=lanes, threads_per_lane=torch.get_num_threads() // lanes)
                run = lanes_runner(path.split("@")[0], net, x, exported, lanes, pool)
            else:
                run = make_runner(path, net, x, exported)
            out = run()                           # warm-up (and compilation, for compile)
            if device.type == "cuda":
                out = run()       # the service's graph paths capture a shape at its second use
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row["setup_s"] = round(time.perf_counter() - t0, 3)
            if ref is None:      # on the CPU the baseline is the float32 reference
                ref = levels(out)
            diff = (levels(out) - ref).abs()
            row["max_diff_levels"] = float(diff.max())
            row["pixels_over_1_level"] = float((diff > MAX_LEVELS).float().mean())
            runners[path] = run
        except Exception as e:  # a path unavailable here is reported, not fatal
            row["error"] = f"{type(e).__name__}: {e}"[:300]
    big = batch * size * size > 2 * 1024 * 1024   # seconds per run on a CPU: fewer runs
    times = time_rounds(runners, device, args.min_s, 2 if big else args.min_runs,
                        args.max_runs)
    pool.shutdown()
    for path, ts in times.items():
        median = statistics.median(ts)
        images = batch * rows[path].get("lanes", 1)
        rows[path].update(latency_ms=1000 * median, min_ms=1000 * min(ts),
                          images_per_s=images / median, runs=len(ts))
    base = rows.get("eager_fp32", {})
    for row in rows.values():   # throughput ratios (for equal batches also latency ratios)
        if "latency_ms" in row and "latency_ms" in base:
            images = row.get("lanes", 1)
            row["speedup"] = images * base["latency_ms"] / row["latency_ms"]
            row["speedup_min"] = images * base["min_ms"] / row["min_ms"]
    allowed = [rows[p] for p in SERVICE_CANDIDATES[device.type] if p in rows
               and "latency_ms" in rows[p] and rows[p]["max_diff_levels"] <= MAX_LEVELS]
    if allowed:
        best = min(allowed, key=lambda r: r["latency_ms"])
        for row in rows.values():
            row["service_path"] = best["path"]
    del runners
    return list(rows.values())


def lanes_runner(path: str, net: nn.Module, x: torch.Tensor, exported: dict[str, Exported],
                 lanes: int, pool: ThreadPoolExecutor) -> Runner:
    """`lanes` single-image forwards of `path` at once, on threads // lanes threads each (what
    the service's CPU batcher does under load); one call = `lanes` images."""
    threads = torch.get_num_threads()
    per = threads // lanes
    torch.set_num_threads(per)
    try:
        runners = [exported[path](x, per) if path in exported
                   else make_runner(path, net, x, exported) for _ in range(lanes)]
    finally:
        torch.set_num_threads(threads)

    def run() -> torch.Tensor:
        torch.set_num_threads(per)      # process-wide: the other paths run between calls
        try:
            outs = [f.result() for f in [pool.submit(r) for r in runners]]
        finally:
            torch.set_num_threads(threads)
        return outs[0]
    return run


def summary(rows: list[dict]) -> list[dict]:
    """Per network and size at batch 1: baseline, service path, best path, speed-ups."""
    out = []
    for (network, size) in sorted({(r["network"], r["size"]) for r in rows if "lanes" not in r}):
        cell = {r["path"]: r for r in rows if r["network"] == network and r["size"] == size
                and r["batch"] == 1 and "lanes" not in r and "latency_ms" in r}
        if "eager_fp32" not in cell:
            continue
        service = next((r["service_path"] for r in cell.values() if "service_path" in r), None)
        best = max(cell.values(), key=lambda r: r["images_per_s"])
        accurate = [r for r in cell.values() if r["max_diff_levels"] <= MAX_LEVELS]
        best_ok = max(accurate, key=lambda r: r["images_per_s"]) if accurate else best
        lanes = {r["path"].split("@")[0]: r for r in rows if r["network"] == network
                 and r["size"] == size and "lanes" in r and "speedup" in r}
        item = {"network": network, "size": size, "baseline_ms": cell["eager_fp32"]["latency_ms"],
                "service_path": service,
                "service_ms": cell[service]["latency_ms"] if service else None,
                "service_speedup": cell[service]["speedup"] if service else None,
                "fastest_path": best["path"], "fastest_speedup": best["speedup"],
                "fastest_accurate_path": best_ok["path"],
                "fastest_accurate_speedup": best_ok["speedup"]}
        for name, r in (("baseline", lanes.get("eager_fp32")), ("service", lanes.get(service))):
            if r is not None:   # throughput of concurrent single-image forwards, same rounds
                item[f"{name}_lanes"] = r["lanes"]
                item[f"{name}_lanes_images_per_s"] = r["images_per_s"]
                item[f"{name}_lanes_speedup"] = r["speedup"]
        out.append(item)
    return out


def plot(result: dict, out: Path) -> None:
    """Speed-up over the baseline per path (batch 1), and per-image cost against the batch."""
    rows = [r for r in result["results"] if "latency_ms" in r]
    networks = sorted({r["network"] for r in rows})
    if not rows:
        return
    paths = [p for p in result["paths"] if any(r["path"] == p for r in rows)]
    paths += sorted({r["path"] for r in rows if "lanes" in r})
    sizes = sorted({r["size"] for r in rows})
    with figure(out, result, nrows=2, ncols=len(networks), figsize=(5.5 * len(networks), 8),
                squeeze=False) as axes:
        for col, network in enumerate(networks):
            ax = axes[0][col]
            width = 0.8 / max(1, len(sizes))
            for i, size in enumerate(sizes):
                vals = [next((r["speedup"] for r in rows if r["network"] == network
                              and r["size"] == size and r["batch"] == 1 and r["path"] == p
                              and "speedup" in r), 0) for p in paths]
                ax.bar(np.arange(len(paths)) + i * width, vals, width, label=f"{size}px")
            ax.axhline(1, color="grey", lw=0.8)
            ax.set_xticks(np.arange(len(paths)) + width * (len(sizes) - 1) / 2, paths,
                          rotation=60, ha="right", fontsize=8)
            ax.set_title(f"{network}: throughput over eager fp32, batch 1", fontsize=9)
            ax.legend(fontsize=8)
            ax = axes[1][col]
            for p in ("eager_fp32", *sorted({r.get("service_path", "") for r in rows} - {""})):
                for size in sizes:
                    pts = sorted((r["batch"], r["latency_ms"] / r["batch"]) for r in rows
                                 if r["network"] == network and r["size"] == size
                                 and r["path"] == p and "lanes" not in r)
                    if pts:
                        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{p} {size}px")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch")
            ax.set_ylabel("ms per image")
            ax.set_title(f"{network}: per-image cost against batch")
            ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--networks", default="style,sr_x4,sr_x8")
    p.add_argument("--paths", default="", help="comma list (default: all for the device)")
    p.add_argument("--sizes", default="256,512,1024", help="output sides")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--compile-batches", default="",
                   help="batches at which to time the compile paths (default: 1 on the CPU, "
                        "where one shape compiles in 10-40 s; all on CUDA)")
    p.add_argument("--max-batch-pixels", type=int, default=0,
                   help="skip cells with more output pixels per batch (0: none skipped)")
    p.add_argument("--lanes", default="2", help="CPU, batch 1: also time this many concurrent "
                                                "single-image forwards of the baseline and of "
                                                "the service's candidates ('' off)")
    p.add_argument("--min-s", type=float, default=1.0, help="timed seconds per path and cell")
    p.add_argument("--min-runs", type=int, default=3)
    p.add_argument("--max-runs", type=int, default=50)
    p.add_argument("--images", default=str(IMAGES), help="photos to run on (synthetic if none)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="first wait (up to 20 min) for a 1-minute load average under this")
    p.add_argument("--out", default="", help="JSON file (default bench/results/model-<dev>.json)")
    args = p.parse_args(argv)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else "cpu" if args.device == "auto" else args.device)
    paths = args.paths.split(",") if args.paths else (CUDA_PATHS if dev.type == "cuda"
                                                      else CPU_PATHS)
    if "eager_fp32" in paths:   # the baseline first: on the CPU it is the error reference
        paths = ["eager_fp32", *[p for p in paths if p != "eager_fp32"]]
    if dev.type == "cpu" and "bf16_autocast" in paths and not native_bf16():
        print("note: this CPU emulates bfloat16; bf16_autocast is measured anyway")
    compile_batches = args.compile_batches or ("1" if dev.type == "cpu" else args.batches)
    out = Path(args.out or f"bench/results/model-{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    load_start = (wait_until_quiet(args.wait_quiet, 1200) if args.wait_quiet
                  else load_average())
    result: dict = {"benchmark": "model", "machine": describe(), "device": str(dev),
                    "paths": paths, "service_paths": SERVICE_CANDIDATES[dev.type],
                    "images": args.images if Path(args.images).is_dir()
                    else "synthetic", "load_average_start": load_start, "results": [],
                    "complete": False, "settings": vars(args)}
    started = time.monotonic()
    for network in args.networks.split(","):
        net, weights = load_network(network, dev)
        result.setdefault("weights", {})[network] = weights
        exported = export_paths(net, [p for p in paths if p in EXPORTED and dev.type == "cpu"])
        for size in map(int, args.sizes.split(",")):
            for batch in map(int, args.batches.split(",")):
                if args.max_batch_pixels and batch * size * size > args.max_batch_pixels:
                    continue
                cell_paths = [p for p in paths if "compile" not in p
                              or str(batch) in compile_batches.split(",")]
                for row in measure_cell(network, net, size, batch, cell_paths, dev, exported,
                                        args):
                    result["results"].append(row)
                    print(line(row), flush=True)
                write_json(out, result)
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
    result.update(summary=summary(result["results"]), load_average_end=load_average(),
                  duration_s=round(time.monotonic() - started, 1), complete=True)
    return finish(out, result, plot, *map(line, result["summary"]))


def line(row: dict) -> str:
    """`row` as one line of JSON, floats to 3 decimals (for the terminal)."""
    return json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})

