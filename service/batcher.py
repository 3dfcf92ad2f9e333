"""A dynamic batcher: concurrent requests with the same key share one call of `run_batch`.

It knows nothing of images or HTTP. Requests wait in a queue per key until the batch is full
(`max_batch_size` or the key's `batch_limit`, or `max_batch_cost` such as a pixel budget) or the
oldest has waited `max_wait_ms`. Worker threads run the batches, so the event loop never blocks
on compute. In the style of Ray Serve's @serve.batch.

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
    started: bool = field(default=False)


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
    """Queues payloads per key and runs them in batches on a single worker thread."""

    def __init__(self, run_batch: Callable[[K, list[P]], Sequence[R]], *,
                 max_batch_size: int, max_wait_ms: float, queue_limit: int,
                 max_batch_cost: int | None = None,
                 batch_limit: Callable[[K], int] | None = None,
                 label: Callable[[K], str] = str,
                 is_device_error: Callable[[BaseException], bool] = lambda e: False,
                 observer: BatchObserver | None = None) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self._batch_limit = batch_limit
        self.max_wait_s = max_wait_ms / 1000
        self.queue_limit = queue_limit
        self.max_batch_cost = max_batch_cost if max_batch_cost is not None else math.inf
        self._label = label
        self._is_device_error = is_device_error
        self._observer = observer
        self._queues: dict[K, deque[_Pending[K]]] = {}
        self._queued = 0
        self._depth: Counter[str] = Counter()
        self._wakeup = asyncio.Event()
        self._flush = False      # drain: run what is queued without waiting for more
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self.lanes = 1
        self._on_lanes: Callable[[int], None] | None = None
        self._busy = 0           # lanes held by running batches
        self._share = 1          # lanes each running batch holds
        self._running: set[asyncio.Task[None]] = set()
        # One thread per lane: the device runs one batch at a time unless use_lanes says more.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-worker")

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="batcher")

    def use_lanes(self, lanes: int, on_lanes: Callable[[int], None] | None = None) -> None:
        """Let up to `lanes` batches run at once (see the module docstring). Call it before any
        batch has run."""
        if self._running:
            raise RuntimeError("use_lanes is for start-up, before any batch runs")
        self.lanes, self._on_lanes = max(1, lanes), on_lanes
        self._executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(max_workers=self.lanes,
                                            thread_name_prefix="batch-worker")

    def limit(self, key: K) -> int:
        """The largest batch formed for `key`."""
        if self._batch_limit is None:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, self._batch_limit(key)))

    async def submit(self, key: K, payload: P, *, deadline: float = math.inf,
                     cost: int = 1) -> Done[R]:
        """Wait for `payload`'s output. `deadline` (time.monotonic()) bounds the queue wait.

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
        pending = _Pending(key, payload, fut, now, deadline, cost)
        self._queues.setdefault(key, deque()).append(pending)
        self._count(key, +1)
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
            key, wait_s = self._pick()
            while key is not None and self._busy + self._next_share() <= self.lanes:
                share = self._next_share()
                self._busy += share
                task = asyncio.create_task(self._run(key, self._take(key), share))
                self._running.add(task)
                task.add_done_callback(functools.partial(self._finished, share=share))
                key, wait_s = self._pick()
            if self._closed and self._queued == 0 and not self._running:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):   # a ready key waits for a lane to free
                await asyncio.wait_for(self._wakeup.wait(), None if key is not None else wait_s)

    def _finished(self, task: asyncio.Task[None], share: int) -> None:
        self._running.discard(task)
        self._busy -= share
        if not task.cancelled() and task.exception() is not None:
            # never let the worker die; callers already got the error
            log.error("batch worker error", exc_info=task.exception())
        self._wakeup.set()

    def _next_share(self) -> int:
        """Lanes for the next batch: all of them if it would run alone, else an equal share;
        fixed while any batch runs, so that concurrent batches hold equal shares."""
        if self._busy == 0:
            ready = sum(math.ceil(len(q) / self.limit(k))
                        for k, q in self._queues.items() if self._is_ready(k, q, time.monotonic()))
            self._share = self.lanes // min(self.lanes, max(1, ready))
        return self._share

    def _is_ready(self, key: K, queue: deque[_Pending[K]], now: float) -> bool:
        if not queue:
            return False
        full = (len(queue) >= self.limit(key)
                or sum(p.cost for p in queue) >= self.max_batch_cost)
        return self._flush or full or queue[0].enqueued_at + self.max_wait_s <= now

    def _pick(self) -> tuple[K | None, float | None]:
        """The ready key whose oldest request is oldest, else how long until one is due."""
        now = time.monotonic()
        best, best_age, next_due = None, math.inf, math.inf
        for key, queue in self._queues.items():
            if not queue:
                continue
            oldest = queue[0].enqueued_at
            if self._is_ready(key, queue, now):
                if oldest < best_age:
                    best, best_age = key, oldest
            else:
                next_due = min(next_due, oldest + self.max_wait_s)
        if best is not None:
            return best, None
        return None, (None if next_due == math.inf else max(0.0, next_due - now))

    def _take(self, key: K) -> list[_Pending[K]]:
        """Pop a batch from the front of `key`'s queue; expired requests get DeadlineExceeded."""
        queue = self._queues[key]
        now = time.monotonic()
        batch: list[_Pending[K]] = []
        cost = 0
        limit = self.limit(key)
        while queue and len(batch) < limit:
            pending = queue[0]
            if batch and cost + pending.cost > self.max_batch_cost:
                break
            queue.popleft()
            self._count(key, -1)
            if pending.future.done():
                continue
            if pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceeded("the deadline passed while the request was queued"))
                continue
            pending.started = True
            batch.append(pending)
            cost += pending.cost
        if not queue:
            del self._queues[key]
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
        queue = self._queues.get(pending.key)
        if queue is None or pending not in queue:
            return
        queue.remove(pending)
        if not queue:
            del self._queues[pending.key]
        self._count(pending.key, -1)

    def _count(self, key: K, delta: int) -> None:
        self._queued += delta
        label = self._label(key)
        self._depth[label] += delta
        if self._observer is not None:
            self._observer.queue_depth(label, self._depth[label])
