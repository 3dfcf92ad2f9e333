"""CUDA graphs, served: a pool of captured forward passes for one runner.

Why: a forward pass of these networks launches some 60 kernels; at small batches the GPU waits
on the launches more than it computes. Replaying a captured CUDA graph launches them all at
once: on the H200 the style network at 256x256 ran 2.7x faster at batch 1 (1-2 % at batch 64).

A graph is fixed to its input shape, so the pool holds one per (height, width, batch bucket):
the buckets are powers of two up to `max_batch`, and a batch is padded up to its bucket with
copies of its last image. Every layer works per image (instance norm, eval mode), so the
padding rows do not change the real ones; they are sliced off. A shape is captured at its
`capture_after`-th use: a capture synchronises the device, so a size seen once runs eagerly.
The pool is bounded by count and by the bytes of the graphs' private memory; the least recently
used graph goes first. A capture that fails (out of memory, an op that cannot be captured) runs
that key eagerly from then on, logged once: never a failed request.

Concurrency: the batcher's lanes replay from several threads. A graph's static input and output
are shared, so each entry has a lock and the event of its last use: a replay makes the calling
thread's current stream wait on that event, copies the batch into the static input, replays,
clones the static output and records the event, all enqueued on that stream; the host waits
for nothing. The CUDA parts (`capture_cuda`, `CudaEvents`) are injected, so that the CPU tests
run the pool's logic with fakes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

log = logging.getLogger("service.graphs")

Runner = Callable[..., torch.Tensor]   # as service.execution.Runner: (x) or (x, mix) -> y
Key = tuple[int, int, int]             # (height, width, batch bucket)
MAX_GRAPHS = 32
MAX_BYTES = 4 << 30                    # private memory of one runner's graphs
CAPTURE_AFTER = 2                      # uses of a key before it is captured
WARMUP = 3                             # eager passes on a side stream before a capture
_SEEN = 1024                           # keys whose uses are counted (the oldest forgotten)
_capturing = threading.Lock()          # one capture at a time in the process


def bucket(n: int, max_batch: int) -> int | None:
    """The batch size a batch of `n` runs at: the next power of two, `max_batch` at most
    (then that is the top bucket); None over `max_batch` (no graph: it runs eagerly)."""
    if n < 1 or n > max_batch:
        return None
    return min(1 << (n - 1).bit_length(), max_batch)


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with copies of its last row appended up to `size` rows (a new tensor)."""
    return torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])


@dataclass
class Captured:
    """One captured forward: `replay()` reads `inputs` and writes `output` in place."""

    replay: Callable[[], object]
    inputs: tuple[torch.Tensor, ...]   # the image batch, and a multi-style network's mix
    output: torch.Tensor
    nbytes: int                        # the graph's private memory


Capture = Callable[[Runner, tuple[torch.Tensor, ...]], Captured]


class Events(Protocol):
    """Stream ordering on the calling thread's current stream (CUDA events, or test fakes)."""

    def new(self) -> Any: ...
    def wait(self, event: Any) -> None: ...         # the current stream waits for `event`
    def record(self, event: Any) -> None: ...       # `event` at this point of the stream
    def synchronize(self, event: Any) -> None: ...  # the host waits for `event`


class CudaEvents:
    def new(self) -> torch.cuda.Event:
        return torch.cuda.Event()

    def wait(self, event: torch.cuda.Event) -> None:
        torch.cuda.current_stream().wait_event(event)

    def record(self, event: torch.cuda.Event) -> None:
        event.record(torch.cuda.current_stream())

    def synchronize(self, event: torch.cuda.Event) -> None:
        event.synchronize()


def capture_cuda(runner: Runner, inputs: tuple[torch.Tensor, ...],
                 warmup: int = WARMUP) -> Captured:
    """Capture `runner(*inputs)` as bench/model.py did: warm-up passes on a side stream (the
    allocator and cuDNN settle there), then the capture on it. Only this thread's calls are
    checked during the capture (`thread_local`): the other lanes keep running. The private
    memory is the growth of the reserved memory over the capture (other lanes' allocations
    can blur it; at least the static buffers)."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            runner(*inputs)
    current.wait_stream(side)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
        output = runner(*inputs)
    current.wait_stream(side)
    static = sum(t.numel() * t.element_size() for t in (*inputs, output))
    return Captured(graph.replay, inputs, output,
                    max(torch.cuda.memory_reserved() - before, static))


class _Entry:
    """One graph, its lock and the event of its last use."""

    def __init__(self, captured: Captured, events: Events) -> None:
        self.captured: Captured | None = captured
        self.nbytes = captured.nbytes
        self.events = events
        self.last_use = events.new()
        self.lock = threading.Lock()

    def replay(self, args: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        """The output rows of `args` (each padded to the bucket), enqueued on the current
        stream; None if the entry was evicted meanwhile."""
        with self.lock:
            if self.captured is None:
                return None
            n = args[0].shape[0]
            self.events.wait(self.last_use)           # the previous replay is done with it
            for static, arg in zip(self.captured.inputs, args, strict=True):
                static[:n].copy_(arg)
                if n < static.shape[0]:
                    static[n:].copy_(arg[-1:].expand(static.shape[0] - n, *arg.shape[1:]))
            self.captured.replay()
            out = self.captured.output[:n].clone()
            self.events.record(self.last_use)
            return out

    def close(self) -> None:
        """Drop the graph once its last replay has finished (its memory goes back to the
        allocator, which must not hand it out while a replay still runs)."""
        with self.lock:
            if self.captured is not None:
                self.events.synchronize(self.last_use)
                self.captured = None


class GraphPool:
    """`runner` replayed from CUDA graphs per (height, width, batch bucket); a runner itself."""

    def __init__(self, runner: Runner, *, max_batch: int, max_graphs: int = MAX_GRAPHS,
                 max_bytes: int = MAX_BYTES, capture_after: int = CAPTURE_AFTER,
                 capture: Capture = capture_cuda, events: Events | None = None) -> None:
        self.runner = runner
        self.max_batch, self.max_graphs, self.max_bytes = max_batch, max_graphs, max_bytes
        self.capture_after = capture_after
        self._capture = capture
        self._events = events or CudaEvents()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()   # least recently used first
        self._uses: OrderedDict[Key, int] = OrderedDict()   # uses; -1: eager for good
        self._warned = False
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor, *mix: torch.Tensor) -> torch.Tensor:
        # Inference mode throughout: the static buffers are written in place, and a tensor made
        # in inference mode (at a capture under LoadedModel.run) cannot be outside it.
        with torch.inference_mode():
            size = bucket(x.shape[0], self.max_batch)
            entry = None if size is None else self._entry((x.shape[2], x.shape[3], size),
                                                          (x, *mix))
            out = None if entry is None else entry.replay((x, *mix))
            return self.runner(x, *mix) if out is None else out

    def keys(self) -> list[Key]:
        """The captured keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def _entry(self, key: Key, args: tuple[torch.Tensor, ...]) -> _Entry | None:
        """The graph for `key`: kept, captured now, or None (run eagerly)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            if self._count_use(key) < self.capture_after:
                return None     # seen too rarely yet, or -1: its capture failed
        with _capturing:
            with self._lock:
                if key in self._entries:       # another lane captured it meanwhile
                    return self._entries[key]
            try:
                captured = self._capture(self.runner, tuple(pad_to(a, key[2]) for a in args))
            except Exception as e:  # never fail a request over a graph: eager instead
                self._give_up(key, f"capture failed: {type(e).__name__}: {e}")
                return None
        if captured.nbytes > self.max_bytes:
            self._give_up(key, f"{captured.nbytes} bytes, over {self.max_bytes}")
            return None
        entry = _Entry(captured, self._events)
        with self._lock:
            self._entries[key] = entry
            evicted = self._evict()
        for old in evicted:
            old.close()
        return entry

    def _count_use(self, key: Key, eager: bool = False) -> int:
        """This use of `key` counted (under the lock): its uses so far, -1 if it runs eagerly
        for good. Only the last _SEEN keys are remembered."""
        uses = self._uses.pop(key, 0)
        uses = -1 if eager or uses < 0 else uses + 1
        self._uses[key] = uses
        if len(self._uses) > _SEEN:
            self._uses.popitem(last=False)
        return uses

    def _evict(self) -> list[_Entry]:
        """Least recently used entries out until within count and bytes (under the lock)."""
        evicted = []
        total = sum(e.nbytes for e in self._entries.values())
        while len(self._entries) > self.max_graphs or total > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            total -= old.nbytes
            evicted.append(old)
        return evicted

    def _give_up(self, key: Key, why: str) -> None:
        with self._lock:
            self._count_use(key, eager=True)
            warn, self._warned = not self._warned, True
        if warn:
            log.warning("CUDA graph for %s runs eagerly (%s); further such keys are not logged",
                        key, why)
