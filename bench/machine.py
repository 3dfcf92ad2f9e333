"""What a result was measured on, quoted beside every figure, and how busy the machine was."""

from __future__ import annotations

import importlib
import os
import platform
import time

import torch

from nets.device import native_bf16


def describe() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "gpu": None,
                               # CPU training (and serving, dtype auto) run in bf16 where this
                               # holds, in fp32 elsewhere: more than twice the steps a minute.
                               "native_bf16": native_bf16()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for package in ("onnxruntime", "openvino"):
        try:
            info[package] = importlib.import_module(package).__version__
        except ImportError:
            info[package] = None
    return info


def caption(result: dict) -> str:
    """The machine and its load around the run, as plot titles and the README say it."""
    m, start, end = result["machine"], result["load_average_start"], result.get("load_average_end")
    gpu = f", {m['gpu']}" if m["gpu"] else ""
    load = f"; 1-min load average {start[0]} at the start" if start else ""
    load += f", {end[0]} at the end" if load and end else ""
    return f"{m['cpu']}, {m['cores']} cores{gpu}, torch {m['torch']}{load}"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on a shared machine skews timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def wait_until_quiet(max_load: float, max_wait_s: float, poll_s: float = 30.0) -> list[float]:
    """Wait (up to `max_wait_s`) for the 1-minute load average to fall below `max_load`; returns
    the load average when the wait ended, quiet or not."""
    deadline = time.monotonic() + max_wait_s
    load = load_average()
    while load and load[0] >= max_load and time.monotonic() < deadline:
        print(f"waiting for a quiet machine: load {load[0]} >= {max_load}", flush=True)
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        load = load_average()
    return load
