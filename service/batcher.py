"""A dynamic batcher: concurrent requests with the same key share one call of `run_batch`.

It knows nothing of images or HTTP. Requests wait in a queue per key until the batch is full
(`max_batch_size`, or `max_batch_cost` such as a pixel budget) or the oldest has waited
`max_wait_ms`. One worker thread runs the batches one after another (one worker per device),
so the event loop never blocks on compute. In the style of Ray Serve's @serve.batch.
"""

from __future__ import annotations

import asyncio
import contextlib
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
class _Pending:
    key: Hashable
    payload: Any
    future: asyncio.Future[Done[Any]]
    enqueued_at: float
    deadline: float
    cost: int
    started: bool = field(default=False)


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
                 label: Callable[[K], str] = str,
                 is_oom: Callable[[BaseException], bool] = lambda e: False,
                 observer: BatchObserver | None = None) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.queue_limit = queue_limit
        self.max_batch_cost = max_batch_cost if max_batch_cost is not None else math.inf
        self._label = label
        self._is_oom = is_oom
        self._observer = observer
        self._queues: dict[Hashable, deque[_Pending]] = {}
        self._queued = 0
        self._depth: Counter[str] = Counter()
        self._wakeup = asyncio.Event()
        self._flush = False      # drain: run what is queued without waiting for more
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        # One thread: the device runs one batch at a time, in arrival order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-worker")

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="batcher")

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
            if key is not None:
                try:
                    await self._run(key, self._take(key))
                except Exception:  # never let the worker die; callers already got the error
                    log.exception("batch worker error")
                continue
            if self._closed and self._queued == 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait_s)

    def _pick(self) -> tuple[Hashable | None, float | None]:
        """The ready key whose oldest request is oldest, else how long until one is due."""
        now = time.monotonic()
        best, best_age, next_due = None, math.inf, math.inf
        for key, queue in self._queues.items():
            if not queue:
                continue
            oldest = queue[0].enqueued_at
            due = oldest + self.max_wait_s
            full = (len(queue) >= self.max_batch_size
                    or sum(p.cost for p in queue) >= self.max_batch_cost)
            if self._flush or full or due <= now:
                if oldest < best_age:
                    best, best_age = key, oldest
            else:
                next_due = min(next_due, due)
        if best is not None:
            return best, None
        return None, (None if next_due == math.inf else max(0.0, next_due - now))

    def _take(self, key: Hashable) -> list[_Pending]:
        """Pop a batch from the front of `key`'s queue; expired requests get DeadlineExceeded."""
        queue = self._queues[key]
        now = time.monotonic()
        batch: list[_Pending] = []
        cost = 0
        while queue and len(batch) < self.max_batch_size:
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

    async def _run(self, key: Hashable, batch: list[_Pending]) -> None:
        if not batch:
            return
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._run_split, key, [p.payload for p in batch])
        except Exception as e:  # every caller of the batch gets the error; the worker goes on
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(e)
            return
        compute_s = time.monotonic() - started
        for pending, output in zip(batch, outputs, strict=True):
            if not pending.future.done():
                pending.future.set_result(Done(output, started - pending.enqueued_at,
                                               compute_s, len(batch)))
        if self._observer is not None:
            self._observer.batch_done(self._label(key),  # type: ignore[arg-type]
                                      [started - p.enqueued_at for p in batch], compute_s)

    def _run_split(self, key: K, payloads: list[P]) -> list[R]:
        """Run on the worker thread; on out-of-memory retry the two halves separately."""
        try:
            outputs = list(self._run_batch(key, payloads))
        except Exception as e:
            if len(payloads) > 1 and self._is_oom(e):
                half = len(payloads) // 2
                log.warning("out of memory on a batch of %d; retrying halves", len(payloads))
                return self._run_split(key, payloads[:half]) + self._run_split(key, payloads[half:])
            raise
        if len(outputs) != len(payloads):
            raise RuntimeError(f"run_batch returned {len(outputs)} outputs "
                               f"for {len(payloads)} inputs")
        return outputs

    # -- bookkeeping ----------------------------------------------------------------------------

    def _remove(self, pending: _Pending) -> None:
        queue = self._queues.get(pending.key)
        if queue is None or pending not in queue:
            return
        queue.remove(pending)
        if not queue:
            del self._queues[pending.key]
        self._count(pending.key, -1)

    def _count(self, key: Hashable, delta: int) -> None:
        self._queued += delta
        label = self._label(key)  # type: ignore[arg-type]
        self._depth[label] += delta
        if self._observer is not None:
            self._observer.queue_depth(label, self._depth[label])
