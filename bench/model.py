"""`python -m bench model`: raw forward latency/throughput of the networks per execution path.

Every path is timed in the same run as the baseline (eager fp32 NCHW under no_grad, as the
reference implementations run it), so that speed-ups are ratios of one run on one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bench.machine import describe
from train.architectures import build

# The shipped models' architectures (the model store records the same options).
NETWORKS = {
    "style": ("style", {"norm": "instance", "upsample": "resize_conv", "padding": "reflect"}, 1),
    "sr_x4": ("superres", {"factor": 4, "norm": "none", "upsample": "resize_conv",
                           "padding": "reflect", "residual": True}, 4),
    "sr_x8": ("superres", {"factor": 8, "norm": "none", "upsample": "resize_conv",
                           "padding": "reflect", "residual": True}, 8),
}
CPU_PATHS = ["eager_fp32", "channels_last", "inference_mode", "bf16_autocast", "compile", "onnx"]
CUDA_PATHS = ["eager_fp32", "channels_last", "fp16", "fp16_cuda_graph", "compile_fp16"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_runner(path: str, net: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument callable running one forward pass of `x` the way `path` describes."""
    dev = x.device
    if path == "eager_fp32":
        def run() -> torch.Tensor:
            with torch.no_grad():
                return net(x)
        return run
    cl_net = net.to(memory_format=torch.channels_last)
    xcl = x.contiguous(memory_format=torch.channels_last)
    if path == "channels_last":
        def run() -> torch.Tensor:
            with torch.no_grad():
                return cl_net(xcl)
        return run
    if path == "inference_mode":
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return cl_net(xcl)
        return run
    if path == "bf16_autocast":
        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
                return cl_net(xcl)
        return run
    if path in ("fp16", "fp16_cuda_graph", "compile_fp16"):
        half, xh = cl_net.half(), xcl.half()
        if path == "fp16":
            def run() -> torch.Tensor:
                with torch.inference_mode():
                    return half(xh)
            return run
        if path == "compile_fp16":
            compiled = torch.compile(half, mode="max-autotune-no-cudagraphs", dynamic=False)
            def run() -> torch.Tensor:
                with torch.inference_mode():
                    return compiled(xh)
            return run
        return cuda_graph_runner(half, xh)
    if path == "compile":
        compiled = torch.compile(cl_net, dynamic=False)
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return compiled(xcl)
        return run
    if path == "onnx":
        return onnx_runner(net, x)
    raise ValueError(f"unknown path {path!r}")


def cuda_graph_runner(net: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
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


def onnx_runner(net: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    import tempfile

    import onnxruntime as ort

    path = Path(tempfile.mkdtemp()) / "net.onnx"
    with torch.no_grad():
        torch.onnx.export(net.float().to(memory_format=torch.contiguous_format), (x,), str(path),
                          input_names=["image"], output_names=["out"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def time_runner(run: Callable[[], torch.Tensor], device: torch.device, min_s: float,
                warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_s or len(times) < 3:
        t0 = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def measure(network: str, path: str, size: int, batch: int, device: torch.device,
            min_s: float, reference: dict) -> dict:
    arch, options, factor = NETWORKS[network]
    torch.manual_seed(0)
    net = build(arch, options).eval().to(device)
    x = torch.rand(batch, 3, size // factor, size // factor, device=device)
    key = (network, size, batch)
    if key not in reference:
        with torch.no_grad():
            reference[key] = net(x).float().cpu()
    run = make_runner(path, net, x)
    times = time_runner(run, device, min_s, warmup=3 if device.type == "cpu" else 10)
    out = run().float().cpu()
    median = statistics.median(times)
    return {"network": network, "path": path, "size": size, "batch": batch,
            "latency_ms": 1000 * median, "images_per_s": batch / median,
            "max_diff_levels": float((out - reference[key]).abs().max() * 255),
            "runs": len(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench model", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--networks", default="style,sr_x4,sr_x8")
    p.add_argument("--paths", default="", help="comma list (default: all for the device)")
    p.add_argument("--sizes", default="256,512,1024", help="output sides")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--min-s", type=float, default=2.0, help="timed seconds per measurement")
    p.add_argument("--out", default="", help="JSON file (default bench/results/model-<dev>.json)")
    args = p.parse_args(argv)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else "cpu" if args.device == "auto" else args.device)
    paths = args.paths.split(",") if args.paths else (CUDA_PATHS if dev.type == "cuda"
                                                      else CPU_PATHS)
    reference: dict = {}
    rows = []
    for network in args.networks.split(","):
        for size in map(int, args.sizes.split(",")):
            for batch in map(int, args.batches.split(",")):
                for path in paths:
                    try:
                        row = measure(network, path, size, batch, dev, args.min_s, reference)
                    except Exception as e:  # a path unavailable here is reported, not fatal
                        row = {"network": network, "path": path, "size": size, "batch": batch,
                               "error": f"{type(e).__name__}: {e}"[:300]}
                    base = next((r for r in rows if r["network"] == network and
                                 r["size"] == size and r["batch"] == batch and
                                 r["path"] == "eager_fp32" and "error" not in r), None)
                    if base and "error" not in row:
                        row["speedup"] = base["latency_ms"] / row["latency_ms"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    with contextlib.suppress(Exception):
                        torch.cuda.empty_cache()
    out = Path(args.out or f"bench/results/model-{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": describe(), "results": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0
