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
CUDA (`cuda_paths`): a dtype in the default (contiguous NCHW) layout, `fp16` or `fp32` (TF32
convolutions), or in channels_last, `fp16_channels_last` or `channels_last` (float32); each also
`_rewrite`. Instance norm makes its input contiguous, so channels_last converts the layout back
and forth at each of the 15 norm layers (on the H200 fp16 channels_last at 1024x1024 took
14.1 ms, fp32 contiguous 8.8). And `fp16_graphs`, `fp16_rewrite_graphs`, `fp32_graphs`: the
contiguous paths replayed from CUDA graphs (`service.graphs`), batches padded to a bucket.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import logging
import threading
from collections.abc import Callable, Collection
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from model_store.onnx_export import onnx_bytes
from nets.device import native_bf16
from service.graphs import GraphPool
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


class CudaPath(NamedTuple):
    """A CUDA execution path: dtype, layout, the rewrite, CUDA graphs."""

    dtype: torch.dtype
    channels_last: bool = False
    rewrite: bool = False
    graphs: bool = False

    @property
    def name(self) -> str:
        if self.channels_last:
            parts = ["channels_last"] if self.dtype == torch.float32 else [
                _DTYPE_NAMES[self.dtype], "channels_last"]
        else:
            parts = [_DTYPE_NAMES.get(self.dtype, "fp32")]
        return "_".join(parts + ["rewrite"] * self.rewrite + ["graphs"] * self.graphs)


_CUDA_DTYPES = {"auto": [torch.float16, torch.float32], "float16": [torch.float16],
                "float32": [torch.float32], "bfloat16": [torch.bfloat16]}


def cuda_paths(dtype_setting: str = "auto") -> dict[str, CudaPath]:
    """Every CUDA path for a dtype setting, by name: both layouts, each with and without the
    rewrite, and graphs of the contiguous layout (the faster with instance norm) in fp16 with
    and without the rewrite and in float32 without it."""
    paths = []
    for dt in _CUDA_DTYPES[dtype_setting]:
        paths += [CudaPath(dt, cl, rw) for cl in (False, True) for rw in (False, True)]
        paths += [CudaPath(dt, rewrite=rw, graphs=True)
                  for rw in ((False, True) if dt != torch.float32 else (False,))]
    return {p.name: p for p in paths}


def memory_format(path: str) -> torch.memory_format:
    """The layout a path keeps its weights and inputs in."""
    return torch.channels_last if "channels_last" in path else torch.contiguous_format


def base_path(device: torch.device, dtype: torch.dtype) -> str:
    """The name of the path that runs the registry's module as loaded (the fixed policy's):
    on CUDA the loaded dtype in the contiguous layout (`memory_format` of it)."""
    if device.type == "cuda":
        return CudaPath(dtype).name
    return "inference_mode" if dtype == torch.float32 else _DTYPE_NAMES.get(dtype, str(dtype))


def cuda_runner(path: CudaPath, module: nn.Module, max_batch: int) -> Runner:
    """`path` of `module` (any dtype and layout; copied, never changed), on the module's
    device; a graph path pads batches up to `max_batch` (`service.graphs`)."""
    net = copy.deepcopy(module).float()
    if path.rewrite:
        net = rewrite(net)
    layout = torch.channels_last if path.channels_last else torch.contiguous_format
    eager = TorchRunner(net.to(path.dtype).to(memory_format=layout), path.dtype,
                        channels_last=path.channels_last)
    return GraphPool(eager, max_batch=max_batch) if path.graphs else eager


def candidates(module: nn.Module, device: torch.device, dtype_setting: str,
               loaded_dtype: torch.dtype, only: Collection[str] | None = None, *,
               max_batch: int = 8, export: Callable[[nn.Module], bytes] = onnx_bytes
               ) -> dict[str, Runner]:
    """The paths worth measuring besides `base_path` (which runs `module` itself), or those of
    them named in `only`.

    `module` is on `device` in `loaded_dtype` (a multi-style network's runners take the style
    weights too). An explicit dtype setting limits the candidates to that dtype; `auto` tries
    them all. `max_batch`: the largest batch a CUDA graph path pads to. `export`: the ONNX
    export of the rewritten module (one that keeps exports across starts may be given).
    """
    runners: dict[str, Runner] = {}
    base = base_path(device, loaded_dtype)
    wanted = lambda name: name != base and (only is None or name in only)  # noqa: E731
    for name, build in _candidates(module, device, dtype_setting, max_batch, wanted,
                                   export).items():
        try:
            runners[name] = build()
        except Exception as e:  # never fail a start over an optional path
            log.warning("execution path %s unavailable: %s: %s", name, type(e).__name__, e)
    return runners


def _candidates(module: nn.Module, device: torch.device, dtype_setting: str, max_batch: int,
                wanted: Callable[[str], bool], export: Callable[[nn.Module], bytes]
                ) -> dict[str, Callable[[], Runner]]:
    """Name -> builder of each candidate `wanted`, so that unwanted ones cost nothing."""
    if device.type == "cuda":
        return {name: functools.partial(cuda_runner, path, module, max_batch)
                for name, path in cuda_paths(dtype_setting).items() if wanted(name)}
    fast = rewrite(copy.deepcopy(module).float())   # weights re-arranged in float32
    runners: dict[str, Callable[[], Runner]] = {}
    if dtype_setting in ("auto", "float32"):
        runners["rewrite"] = lambda: TorchRunner(fast, torch.float32)
        exported = functools.cache(lambda: export(fast))   # once, shared
        if installed("onnxruntime"):
            runners["onnx_rewrite"] = lambda: OnnxRunner(exported())
        if installed("openvino"):
            runners["openvino_rewrite"] = lambda: OpenVinoRunner(exported())
    if dtype_setting == "auto" and native_bf16():
        runners["bf16_autocast"] = lambda: TorchRunner(module, torch.float32,
                                                       autocast=torch.bfloat16)
    return {name: build for name, build in runners.items() if wanted(name)}
