"""Execution paths: the ways a loaded network can run a batch, named as in `python -m bench model`.

A runner takes a float32 (N, 3, H, W) batch in [0, 1] on the model's device (and, for a
multi-style network, its (N, S) style weights) and returns the network's output (any float
dtype, on the device or the CPU). `candidates` builds the paths worth
trying on a device; `service.policy` times them at warm-up and keeps the fastest whose output
stays within one grey level of float32 (`bench model` measures all of them, and more).

CPU: `inference_mode` (the network as trained, NCHW: channels_last is slower with instance norm
on the CPU), `rewrite` (`service.rewrite`: the same function with cheaper layers),
`onnx_rewrite` and `openvino_rewrite` (the rewrite's ONNX export under ONNX Runtime or OpenVINO,
when installed: the `cpu` extra), `bf16_autocast` (only on CPUs with native bfloat16; on the
shipped networks it is 2-20 grey levels off, so it is rejected).
CUDA: `fp16` and `channels_last` (float32, TF32 convolutions), each also `_rewrite`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import logging
import threading
from collections.abc import Callable, Collection
from typing import Any, cast

import torch
from torch import nn

from model_store.onnx_export import onnx_bytes
from nets.device import native_bf16
from service.rewrite import rewrite

log = logging.getLogger("service.execution")

Runner = Callable[..., torch.Tensor]   # (x) -> y, or (x, mix) -> y for a multi-style network
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_lane = threading.local()


def use_threads(n: int) -> None:
    """Run the forward passes started from this thread on `n` CPU threads.

    torch's intra-op thread count is per thread, but a thread starts with the count last set
    by any thread but the main one (a lane of `n` threads leaves its count to every thread made
    after it), so each thread that runs forward passes sets its own, and concurrent passes hold
    equal shares (the batcher's lanes). ONNX Runtime sessions are chosen per count.
    """
    _lane.threads = n
    torch.set_num_threads(n)


def current_threads() -> int:
    return getattr(_lane, "threads", 0) or torch.get_num_threads()


class TorchRunner:
    """`module` under inference mode, in `dtype` (or float32 under bfloat16 autocast)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, *, channels_last: bool = False,
                 autocast: torch.dtype | None = None) -> None:
        self.module, self.dtype = module, dtype
        self.channels_last, self.autocast = channels_last, autocast

    def __call__(self, x: torch.Tensor, *mix: torch.Tensor) -> torch.Tensor:
        cast = (torch.autocast(x.device.type, dtype=self.autocast) if self.autocast
                else contextlib.nullcontext())
        with torch.inference_mode(), cast:
            x = x.to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.module(x, *mix)


class ExportedRunner:
    """A runner of the ONNX export (`onnx_bytes`): tensors in, a tensor out, on the thread
    count of the calling thread (`use_threads`) or on `threads` given to `run`."""

    def run(self, x: torch.Tensor, *mix: torch.Tensor, threads: int) -> torch.Tensor:
        feed = {"image": x.float().cpu().numpy()}
        if mix:
            feed["mix"] = mix[0].float().cpu().numpy()
        return torch.from_numpy(self._infer(feed, threads))

    def __call__(self, x: torch.Tensor, *mix: torch.Tensor) -> torch.Tensor:
        return self.run(x, *mix, threads=current_threads())

    def _infer(self, feed: dict[str, Any], threads: int) -> Any:
        """The output array for the numpy inputs `feed`."""
        raise NotImplementedError


class OnnxRunner(ExportedRunner):
    """ONNX Runtime on the CPU, running `model` (`onnx_bytes`). One session per thread count
    (`use_threads`); for a share of the threads between 1 and all, one per calling
    thread, so that concurrent lanes never share an intra-op pool (with all threads the pass
    runs alone)."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime  # optional: the `cpu` extra

        self._ort = onnxruntime
        self._model = model
        self._all = torch.get_num_threads()
        self._sessions: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    def session(self, threads: int) -> Any:
        key = (threads, threading.get_ident() if 1 < threads < self._all else 0)
        with self._lock:
            if key not in self._sessions:
                opts = self._ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                # Idle pool threads sleep instead of spinning: on a shared or busy CPU (the
                # codec threads, other lanes, other processes) spinning threads steal the
                # cores the forward pass needs; measured 1.5x faster at 2 threads under load.
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._sessions[key] = self._ort.InferenceSession(
                    self._model, opts, providers=["CPUExecutionProvider"])
            return self._sessions[key]

    def _infer(self, feed: dict[str, Any], threads: int) -> Any:
        return self.session(threads).run(None, feed)[0]


class OpenVinoRunner(ExportedRunner):
    """OpenVINO on the CPU, running the same ONNX export as `OnnxRunner`: its fused kernels
    (convolution with the next element-wise layers, instance norm as one pass) ran the
    rewritten networks 1.4-2.6x faster than ONNX Runtime on 2 AVX-512 cores
    (`bench/results/model-cpu.json`). Each calling thread compiles its own model per thread
    count: requests of one compiled model run one at a time, so concurrent lanes would
    otherwise take turns."""

    def __init__(self, model: bytes) -> None:
        import openvino  # optional: the `cpu` extra

        self._core = openvino.Core()
        self._model = self._core.read_model(model, b"")
        self._requests = threading.local()

    def request(self, threads: int) -> Any:
        """This thread's inference request on `threads` threads (a request is not thread-safe)."""
        mine = cast(dict[int, Any], vars(self._requests))   # this thread's, by thread count
        if threads not in mine:
            mine[threads] = self._core.compile_model(self._model, "CPU", {
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": "f32",       # never bf16, even where native
                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                "ENABLE_CPU_PINNING": False,   # pinned lanes would share the same cores
            }).create_infer_request()
        return mine[threads]

    def _infer(self, feed: dict[str, Any], threads: int) -> Any:
        return self.request(threads).infer(feed)[0]   # a copy: outputs are not shared


def installed(package: str) -> bool:
    """Whether an optional package (`onnxruntime`, `openvino`) can be imported."""
    return importlib.util.find_spec(package) is not None


def base_path(device: torch.device, dtype: torch.dtype) -> str:
    """The name of the path that runs the registry's module as loaded (the fixed policy's)."""
    if device.type == "cuda":
        return _DTYPE_NAMES.get(dtype, "channels_last")
    return "inference_mode" if dtype == torch.float32 else _DTYPE_NAMES.get(dtype, str(dtype))


def candidates(module: nn.Module, device: torch.device, dtype_setting: str,
               loaded_dtype: torch.dtype, only: Collection[str] | None = None
               ) -> dict[str, Runner]:
    """The paths worth measuring besides `base_path` (which runs `module` itself), or those of
    them named in `only`.

    `module` is on `device` in `loaded_dtype` (a multi-style network's runners take the style
    weights too). An explicit dtype setting limits the candidates to that dtype; `auto` tries
    them all.
    """
    runners: dict[str, Runner] = {}
    for name, build in _candidates(module, device, dtype_setting, loaded_dtype,
                                   lambda name: only is None or name in only).items():
        try:
            runners[name] = build()
        except Exception as e:  # never fail a start over an optional path
            log.warning("execution path %s unavailable: %s: %s", name, type(e).__name__, e)
    return runners


def _candidates(module: nn.Module, device: torch.device, dtype_setting: str,
                loaded_dtype: torch.dtype, wanted: Callable[[str], bool]
                ) -> dict[str, Callable[[], Runner]]:
    """Name -> builder of each candidate `wanted`, so that unwanted ones cost nothing."""
    fast = rewrite(copy.deepcopy(module).float())   # weights re-arranged in float32
    runners: dict[str, Callable[[], Runner]] = {}
    if device.type == "cuda":
        dtypes = {"auto": [torch.float16, torch.float32], "float16": [torch.float16],
                  "float32": [torch.float32], "bfloat16": [torch.bfloat16]}[dtype_setting]

        def on_gpu(net: nn.Module, dt: torch.dtype) -> Callable[[], Runner]:
            return lambda: TorchRunner(
                copy.deepcopy(net).to(dt).to(memory_format=torch.channels_last), dt,
                channels_last=True)

        for dt in dtypes:
            name = _DTYPE_NAMES.get(dt, "channels_last")
            if dt != loaded_dtype:
                runners[name] = on_gpu(module, dt)
            runners["rewrite" if dt == torch.float32 else f"{name}_rewrite"] = on_gpu(fast, dt)
    else:
        if dtype_setting in ("auto", "float32"):
            runners["rewrite"] = lambda: TorchRunner(fast, torch.float32)
            exported = functools.cache(lambda: onnx_bytes(fast))   # once, shared
            if installed("onnxruntime"):
                runners["onnx_rewrite"] = lambda: OnnxRunner(exported())
            if installed("openvino"):
                runners["openvino_rewrite"] = lambda: OpenVinoRunner(exported())
        if dtype_setting == "auto" and native_bf16():
            runners["bf16_autocast"] = lambda: TorchRunner(module, torch.float32,
                                                           autocast=torch.bfloat16)
    return {name: build for name, build in runners.items() if wanted(name)}
