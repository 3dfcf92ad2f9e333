"""A dynamic batcher: concurrent requests with the same key share one call of `run_batch`.

It knows nothing of images or HTTP. Worker threads run the batches, so the event loop never
blocks on compute. In the style of Ray Serve's @serve.batch.

Dispatch: a batch starts as soon as a lane is free (below), with what its key has queued, up
to `max_batch_size` (or the key's `batch_limit`) and `max_batch_cost` (such as a pixel budget).
So a lone request on an idle device never waits, and under load the next batch is what queued
while the previous one ran: the arrival rate sets the batch size. `wait_when_idle=True` is the
older behaviour: a key's requests also wait, up to `max_wait_ms`, for their batch to fill,
even on an idle device (without it `max_wait_ms` is unused).

Priority: `submit(..., low=True)` (big tiled jobs) queues apart from normal requests with the
same key, and its batches never mix with theirs. A ready normal queue always starts before a
low one, whatever their ages; low batches run whenever no normal request is ready, one at a
time, and on several lanes never on all of them, so that a normal request finds a lane soon.
`normal_pending` tells work outside the batcher (instance-norm tiled jobs) to yield.

Lanes: by default one batch runs at a time (one worker per device). `use_lanes(n, on_lanes)`
lets up to n batches run at once, for a CPU where n single-image forwards on 1/n of the threads
each beat one forward on all of them. A batch that would run alone takes every lane (all the
threads: the lowest latency); when several are ready they take equal shares, and later ones
join at that share while any runs. `on_lanes(k)` is called on the worker thread before each
batch with the lanes it holds (e.g. to set the thread count); concurrent batches always hold
equal shares, so a process-wide setting such as torch's thread count fits all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("service.batcher")

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")
R = TypeVar("R")


class QueueFull(Exception):
    """The bounded queue is full; the request is refused at once."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its compute started."""


class BatcherClosed(Exception):
    """The batcher is shut down (or shut down before the request could run)."""


@dataclass(frozen=True)
class Done(Generic[R]):
    """A request's output with where its time went."""

    value: R
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass(eq=False)
class _Pending(Generic[K]):
    key: K
    payload: Any
    future: asyncio.Future[Done[Any]]
    enqueued_at: float
    deadline: float
    cost: int
    low: bool = False
    started: bool = field(default=False)

    @property
    def queue(self) -> tuple[K, bool]:
        """The queue it waits in: low-priority requests queue apart."""
        return self.key, self.low


@dataclass(frozen=True)
class _Failed:
    """A request's error, in place of its output."""

    error: Exception


class BatchObserver(Protocol):
    """Hooks for metrics; `label` groups keys (e.g. the model name of a (model, shape) key)."""

    def queue_depth(self, label: str, depth: int) -> None: ...

    def batch_done(self, label: str, queue_waits_s: Sequence[float], compute_s: float) -> None:
        ...


class Batcher(Generic[K, P, R]):
    """Queues payloads per key (and priority) and runs them in batches on worker threads."""

    def __init__(self, run_batch: Callable[[K, list[P]], Sequence[R]], *,
                 max_batch_size: int, queue_limit: int, max_wait_ms: float = 0.0,
                 wait_when_idle: bool = False, max_batch_cost: int | None = None,
                 batch_limit: Callable[[K], int] | None = None,
                 label: Callable[[K], str] = str,
                 is_device_error: Callable[[BaseException], bool] = lambda e: False,
                 observer: BatchObserver | None = None) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self._batch_limit = batch_limit
        # How long a queue waits for its batch to fill while a lane is free: by default not at
        # all (a queue is ready as soon as it holds a request; requests wait only for a lane).
        self.max_wait_s = max_wait_ms / 1000 if wait_when_idle else 0.0
        self.queue_limit = queue_limit
        self.max_batch_cost = max_batch_cost if max_batch_cost is not None else math.inf
        self._label = label
        self._is_device_error = is_device_error
        self._observer = observer
        self._queues: dict[tuple[K, bool], deque[_Pending[K]]] = {}   # per (key, low)
        self._queued = 0
        self._normal = 0         # normal-priority requests queued or in a running batch
        self._depth: Counter[str] = Counter()
        self._wakeup = asyncio.Event()
        self._flush = False      # drain: run what is queued without waiting for more
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self.lanes = 1
        self._split = True       # a lone batch takes every lane (use_lanes)
        self._on_lanes: Callable[[int], None] | None = None
        self._busy = 0           # lanes held by running batches
        self._share = 1          # lanes each running batch holds
        self._running: set[asyncio.Task[None]] = set()
        self._low_running = 0    # low-priority batches running (at most one)
        # One thread per lane: the device runs one batch at a time unless use_lanes says more.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-worker")

    @property
    def queued(self) -> int:
        """Requests waiting for a batch, of both priorities."""
        return self._queued

    @property
    def normal_pending(self) -> bool:
        """Whether normal-priority requests are queued or running: work outside the batcher
        yields to them. A plain int read, so any thread may ask."""
        return self._normal > 0

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="batcher")

    def use_lanes(self, lanes: int, on_lanes: Callable[[int], None] | None = None, *,
                  split: bool = True) -> None:
        """Let up to `lanes` batches run at once (see the module docstring). Call it before any
        batch has run. `split=False`: every batch holds one lane, alone or not (a GPU's lanes
        are streams that overlap one batch's copies with another's compute, not a share of
        threads that a lone batch should have all of)."""
        if self._running:
            raise RuntimeError("use_lanes is for start-up, before any batch runs")
        self.lanes, self._on_lanes, self._split = max(1, lanes), on_lanes, split
        self._executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(max_workers=self.lanes,
                                            thread_name_prefix="batch-worker")

    def limit(self, key: K) -> int:
        """The largest batch formed for `key`."""
        if self._batch_limit is None:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self._batch_limit(key)))

    async def submit(self, key: K, payload: P, *, deadline: float = math.inf,
                     cost: int = 1, low: bool = False) -> Done[R]:
        """Wait for `payload`'s output. `deadline` (time.monotonic()) bounds the queue wait.
        `low`: background work (big tiled jobs), run only when no normal request is ready.

        Cancelling the caller (e.g. the client went away) removes a request that has not
        started; a request already computing finishes and its output is dropped.
        """
        if self._closed:
            raise BatcherClosed("the batcher is shut down")
        if self._queued >= self.queue_limit:
            raise QueueFull(f"{self._queued} requests are already queued "
                            f"(limit {self.queue_limit})")
        now = time.monotonic()
        if now >= deadline:
            raise DeadlineExceeded("the deadline passed before the request was queued")
        fut: asyncio.Future[Done[R]] = asyncio.get_running_loop().create_future()
        pending = _Pending(key, payload, fut, now, deadline, cost, low)
        self._queues.setdefault(pending.queue, deque()).append(pending)
        self._count(pending, +1)
        self._wakeup.set()
        try:
            timeout = None if deadline == math.inf else max(0.0, deadline - now)
            done, _ = await asyncio.wait({fut}, timeout=timeout)
            if not done:
                if not pending.started:
                    self._remove(pending)
                    fut.cancel()
                    raise DeadlineExceeded("the deadline passed while the request was queued")
                return await fut  # compute has started: it is bounded, let it finish
            return fut.result()
        except asyncio.CancelledError:
            if not pending.started:
                self._remove(pending)
            fut.cancel()
            raise

    def flush(self) -> None:
        """Stop waiting for batches to fill: used when draining, since nothing more will come."""
        self._flush = True
        self._wakeup.set()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, run what is queued (up to `timeout_s`), then stop the worker."""
        self._closed = True
        self.flush()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
            except TimeoutError:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        for queue in self._queues.values():
            for pending in queue:
                if not pending.future.done():
                    pending.future.set_exception(BatcherClosed("shut down before it could run"))
        self._queues.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the worker -----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            which, wait_s = self._pick()
            while which is not None:
                key, low = which
                share = self._next_share(low)
                if self._busy + share > self.lanes:
                    break
                batch = self._take(which)
                self._busy += share
                self._low_running += low
                task = asyncio.create_task(self._run(key, batch, share))
                self._running.add(task)
                task.add_done_callback(functools.partial(
                    self._finished, share=share, low=low, normal=0 if low else len(batch)))
                which, wait_s = self._pick()
            if self._closed and self._queued == 0 and not self._running:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):   # a ready queue waits for a lane to free
                await asyncio.wait_for(self._wakeup.wait(),
                                       None if which is not None else wait_s)

    def _finished(self, task: asyncio.Task[None], share: int, low: bool, normal: int) -> None:
        self._running.discard(task)
        self._busy -= share
        self._low_running -= low
        self._normal -= normal
        if not task.cancelled() and task.exception() is not None:
            # never let the worker die; callers already got the error
            log.error("batch worker error", exc_info=task.exception())
        self._wakeup.set()

    def _next_share(self, low: bool) -> int:
        """Lanes for the next batch: all of them if it would run alone, else an equal share;
        fixed while any batch runs, so that concurrent batches hold equal shares. A low batch
        counts as one of at least two: on several lanes it leaves one for normal requests."""
        if not self._split:
            return 1
        if self._busy == 0:
            now = time.monotonic()
            ready = [(k, lo, q) for (k, lo), q in self._queues.items()
                     if self._is_ready(k, q, now)]
            batches = sum(math.ceil(len(q) / self.limit(k)) for k, lo, q in ready if not lo)
            if low or any(lo for _, lo, _ in ready):   # (only one low batch runs at a time)
                batches = max(2, batches + 1)
            self._share = self.lanes // min(self.lanes, max(1, batches))
        return self._share

    def _is_ready(self, key: K, queue: deque[_Pending[K]], now: float) -> bool:
        if not queue:
            return False
        full = (len(queue) >= self.limit(key)
                or sum(p.cost for p in queue) >= self.max_batch_cost)
        return self._flush or full or queue[0].enqueued_at + self.max_wait_s <= now

    def _pick(self) -> tuple[tuple[K, bool] | None, float | None]:
        """The ready queue to run next: normal before low priority (a low batch only while none
        runs), the oldest request first; else how long until a queue is due (None: until woken,
        by a request or a batch that ends)."""
        now = time.monotonic()
        best, best_rank, next_due = None, (True, math.inf), math.inf
        for (key, low), queue in self._queues.items():
            if not queue:
                continue
            oldest = queue[0].enqueued_at
            if not self._is_ready(key, queue, now):
                next_due = min(next_due, oldest + self.max_wait_s)
            elif not (low and self._low_running) and (low, oldest) < best_rank:
                best, best_rank = (key, low), (low, oldest)
        if best is not None:
            return best, None
        return None, (None if next_due == math.inf else max(0.0, next_due - now))

    def _take(self, which: tuple[K, bool]) -> list[_Pending[K]]:
        """Pop a batch from the front of a queue; expired requests get DeadlineExceeded. The
        taken normal requests count as pending (`normal_pending`) until their batch ends."""
        queue = self._queues[which]
        now = time.monotonic()
        batch: list[_Pending[K]] = []
        cost = 0
        limit = self.limit(which[0])
        while queue and len(batch) < limit:
            pending = queue[0]
            if batch and cost + pending.cost > self.max_batch_cost:
                break
            queue.popleft()
            self._count(pending, -1)
            if pending.future.done():
                continue
            if pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceeded("the deadline passed while the request was queued"))
                continue
            pending.started = True
            batch.append(pending)
            cost += pending.cost
            self._normal += not pending.low
        if not queue:
            del self._queues[which]
        return batch

    async def _run(self, key: K, batch: list[_Pending[K]], lanes: int = 1) -> None:
        if not batch:
            return
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._run_on_lanes, key, [p.payload for p in batch], lanes)
        except Exception as e:  # every caller of the batch gets the error; the worker goes on
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(e)
            return
        compute_s = time.monotonic() - started
        for pending, output in zip(batch, outputs, strict=True):
            if pending.future.done():
                continue
            if isinstance(output, _Failed):
                pending.future.set_exception(output.error)
            else:
                pending.future.set_result(Done(output, started - pending.enqueued_at,
                                               compute_s, len(batch)))
        if self._observer is not None:
            self._observer.batch_done(self._label(key),
                                      [started - p.enqueued_at for p in batch], compute_s)

    def _run_on_lanes(self, key: K, payloads: list[P], lanes: int) -> list[R | _Failed]:
        if self._on_lanes is not None:
            self._on_lanes(lanes)
        return self._run_split(key, payloads)

    def _run_split(self, key: K, payloads: list[P]) -> list[R | _Failed]:
        """Each payload's output or error, on the worker thread. After a device error (out of
        memory, or a tensor the device cannot take) the two halves are retried separately,
        down to single requests: only a request that fails alone gets the error. Any other
        error goes to every request of the batch."""
        try:
            outputs: list[R | _Failed] = list(self._run_batch(key, payloads))
        except Exception as e:
            if len(payloads) > 1 and self._is_device_error(e):
                half = len(payloads) // 2
                log.warning("%s on a batch of %d; retrying halves", type(e).__name__,
                            len(payloads))
                return self._run_split(key, payloads[:half]) + self._run_split(key, payloads[half:])
            return [_Failed(e)] * len(payloads)
        if len(outputs) != len(payloads):
            return [_Failed(RuntimeError(f"run_batch returned {len(outputs)} outputs "
                                         f"for {len(payloads)} inputs"))] * len(payloads)
        return outputs

    # -- bookkeeping ----------------------------------------------------------------------------

    def _remove(self, pending: _Pending[K]) -> None:
        queue = self._queues.get(pending.queue)
        if queue is None or pending not in queue:
            return
        queue.remove(pending)
        if not queue:
            del self._queues[pending.queue]
        self._count(pending, -1)

    def _count(self, pending: _Pending[K], delta: int) -> None:
        """Queue depth: `queued` and the metrics count both priorities."""
        self._queued += delta
        self._normal += 0 if pending.low else delta
        label = self._label(pending.key)
        self._depth[label] += delta
        if self._observer is not None:
            self._observer.queue_depth(label, self._depth[label])
