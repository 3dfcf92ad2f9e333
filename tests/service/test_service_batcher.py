"""The generic batcher, with plain functions as the 'model' (it knows nothing of images)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import Batcher, BatcherClosed, DeadlineExceeded, QueueFull


class Recorder:
    """run_batch that doubles numbers, records batches (and the lanes each held), and can be
    held on a payload."""

    def __init__(self, hold_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.lanes: list[int] = []
        self.hold_on = hold_on
        self.entered = threading.Event()
        self.release = threading.Event()
        self.local = threading.local()

    def on_lanes(self, lanes: int) -> None:
        self.local.lanes = lanes

    def __call__(self, key: str, payloads: list[object]) -> list[object]:
        self.batches.append(list(payloads))
        self.lanes.append(getattr(self.local, "lanes", 1))
        if self.hold_on in payloads:
            self.entered.set()
            assert self.release.wait(30)
        return [p * 2 for p in payloads]  # type: ignore[operator]


def make(run, **kw) -> Batcher:  # noqa: ANN001
    options = dict(max_batch_size=8, max_wait_ms=10, queue_limit=100)
    options.update(kw)
    batcher = Batcher(run, **options)
    batcher.start()
    return batcher


async def held(batcher: Batcher, rec: Recorder) -> asyncio.Task:
    """Submit the holding payload and wait until the worker is inside run_batch with it."""
    task = asyncio.create_task(batcher.submit("k", rec.hold_on))
    await asyncio.to_thread(rec.entered.wait, 10)
    return task


async def queued(batcher: Batcher, n: int) -> None:
    for _ in range(2000):
        if batcher.queued == n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"expected {n} queued, have {batcher.queued}")


async def test_concurrent_requests_share_one_call() -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=5, max_wait_ms=10_000)
    results = await asyncio.gather(*(batcher.submit("k", i) for i in range(5)))
    assert [r.value for r in results] == [0, 2, 4, 6, 8]
    assert rec.batches == [[0, 1, 2, 3, 4]]
    assert all(r.batch_size == 5 for r in results)
    await batcher.close()


async def test_max_batch_size_and_cost_budget_split_batches() -> None:
    rec = Recorder(hold_on=-1)
    batcher = make(rec, max_batch_size=3, max_batch_cost=10, max_wait_ms=0)
    first = await held(batcher, rec)
    tasks = [asyncio.create_task(batcher.submit("k", i, cost=4)) for i in range(5)]
    await queued(batcher, 5)
    rec.release.set()
    await asyncio.gather(first, *tasks)
    # cost 4 each under a budget of 10: two per batch, though three would fit by count
    assert rec.batches[1:] == [[0, 1], [2, 3], [4]]
    await batcher.close()


async def test_keys_are_never_mixed() -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=4, max_wait_ms=5)
    await asyncio.gather(*(batcher.submit(k, i) for k, i in
                           [("a", 1), ("b", 10), ("a", 2), ("b", 20)]))
    assert sorted(map(sorted, rec.batches)) == [[1, 2], [10, 20]]
    await batcher.close()


async def test_lone_request_on_an_idle_batcher_runs_at_once() -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=64, max_wait_ms=1000)   # unused without wait_when_idle
    started = time.monotonic()
    done = await batcher.submit("k", 21)
    assert done.value == 42 and done.batch_size == 1
    assert time.monotonic() - started < 0.3
    assert rec.batches == [[21]]
    await batcher.close()


async def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    """Under load the next batch is what queued while the previous one ran."""
    rec = Recorder(hold_on=-1)
    batcher = make(rec, max_batch_size=8, max_wait_ms=1000)
    first = await held(batcher, rec)
    tasks = [asyncio.create_task(batcher.submit("k", i)) for i in range(5)]
    await queued(batcher, 5)
    rec.release.set()
    results = await asyncio.gather(first, *tasks)
    assert [len(b) for b in rec.batches] == [1, 5]
    assert [r.batch_size for r in results] == [1, 5, 5, 5, 5, 5]
    await batcher.close()


async def test_wait_when_idle_keeps_the_old_wait_for_company() -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=64, max_wait_ms=20, wait_when_idle=True)
    started = time.monotonic()
    done = await batcher.submit("k", 21)
    assert done.value == 42
    assert time.monotonic() - started >= 0.019
    assert done.queue_s >= 0.019
    await batcher.close()


async def test_a_ready_normal_queue_runs_before_an_older_low_one() -> None:
    """Same key, both priorities: never one batch, and the normal request goes first."""
    rec = Recorder(hold_on=-1)
    batcher = make(rec)
    first = await held(batcher, rec)
    tile = asyncio.create_task(batcher.submit("k", 1, low=True))
    await queued(batcher, 1)
    small = asyncio.create_task(batcher.submit("k", 2))
    await queued(batcher, 2)
    rec.release.set()
    await asyncio.gather(first, tile, small)
    assert rec.batches == [[-1], [2], [1]]
    await batcher.close()


async def test_a_low_request_runs_when_nothing_normal_is_ready() -> None:
    rec = Recorder()
    batcher = make(rec, max_wait_ms=1000)
    done = await asyncio.wait_for(batcher.submit("k", 3, low=True), 10)
    assert done.value == 6 and rec.batches == [[3]]
    await batcher.close()


async def test_normal_pending_counts_normal_requests_queued_or_running_only() -> None:
    rec = Recorder(hold_on=-1)
    batcher = make(rec)
    assert not batcher.normal_pending
    tile = asyncio.create_task(batcher.submit("k", -1, low=True))
    await asyncio.to_thread(rec.entered.wait, 10)
    assert not batcher.normal_pending and batcher.queued == 0       # a low batch runs
    small = asyncio.create_task(batcher.submit("k", 2))
    await queued(batcher, 1)                                        # behind it: one lane
    assert batcher.normal_pending
    rec.release.set()
    await asyncio.gather(tile, small)
    assert not batcher.normal_pending
    await batcher.close()


async def test_a_low_batch_never_holds_every_lane() -> None:
    """Two lanes: a lone low batch takes one (a lone normal one takes both), a second low batch
    waits for the first although a lane is free, and a normal request runs on that lane."""
    rec = Recorder(hold_on=-1)
    batcher = Batcher(rec, max_batch_size=8, queue_limit=100)
    batcher.use_lanes(2, rec.on_lanes)
    batcher.start()
    tiles = asyncio.create_task(batcher.submit("big", -1, low=True))
    await asyncio.to_thread(rec.entered.wait, 10)
    more = asyncio.create_task(batcher.submit("big", 5, low=True))
    await queued(batcher, 1)
    small = await asyncio.wait_for(batcher.submit("k", 1), 10)       # the tiles still run
    assert small.value == 2 and not tiles.done() and batcher.queued == 1
    rec.release.set()
    await asyncio.gather(tiles, more)
    alone = await batcher.submit("k", 7)
    assert alone.value == 14
    assert rec.batches == [[-1], [1], [5], [7]]
    assert rec.lanes == [1, 1, 1, 2]
    await batcher.close()


async def test_full_queue_rejects_at_once() -> None:
    rec = Recorder(hold_on=-1)
    batcher = make(rec, queue_limit=2, max_wait_ms=0)
    first = await held(batcher, rec)
    waiting = [asyncio.create_task(batcher.submit("k", i)) for i in (1, 2)]
    await queued(batcher, 2)
    with pytest.raises(QueueFull):
        await batcher.submit("k", 3)
    rec.release.set()
    assert [(await t).value for t in waiting] == [2, 4]
    await first
    await batcher.close()


async def test_deadline_passing_in_the_queue_never_runs() -> None:
    rec = Recorder(hold_on=-1)
    batcher = make(rec, max_wait_ms=0)
    first = await held(batcher, rec)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit("k", 7, deadline=time.monotonic() + 0.05)
    assert batcher.queued == 0
    rec.release.set()
    await first
    assert rec.batches == [[-1]]
    with pytest.raises(DeadlineExceeded):
        await batcher.submit("k", 8, deadline=time.monotonic() - 1)
    await batcher.close()


async def test_cancelled_caller_is_removed_before_compute() -> None:
    rec = Recorder(hold_on=-1)
    batcher = make(rec, max_wait_ms=0)
    first = await held(batcher, rec)
    gone = asyncio.create_task(batcher.submit("k", 5))
    stays = asyncio.create_task(batcher.submit("k", 6))
    await queued(batcher, 2)
    gone.cancel()
    await queued(batcher, 1)
    rec.release.set()
    assert (await stays).value == 12
    await first
    assert [5] not in rec.batches and all(5 not in b for b in rec.batches)
    await batcher.close()


async def test_an_exception_reaches_every_caller_and_the_worker_goes_on() -> None:
    def run(key: str, payloads: list[int]) -> list[int]:
        if 13 in payloads:
            raise ValueError("unlucky batch")
        return payloads

    batcher = make(run, max_batch_size=3, max_wait_ms=10_000)
    results = await asyncio.gather(*(batcher.submit("k", i) for i in (12, 13, 14)),
                                   return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    again = await asyncio.gather(*(batcher.submit("k", i) for i in (1, 2, 3)))
    assert [r.value for r in again] == [1, 2, 3]
    await batcher.close()


async def test_wrong_number_of_outputs_is_an_error_for_all() -> None:
    batcher = make(lambda key, payloads: payloads[:1], max_batch_size=2, max_wait_ms=10_000)
    results = await asyncio.gather(batcher.submit("k", 1), batcher.submit("k", 2),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "outputs" in str(r) for r in results)
    await batcher.close()


async def test_out_of_memory_splits_the_batch_in_halves() -> None:
    calls: list[int] = []

    def run(key: str, payloads: list[int]) -> list[int]:
        calls.append(len(payloads))
        if len(payloads) > 2:
            raise MemoryError("simulated device out of memory")
        return [p + 100 for p in payloads]

    batcher = make(run, max_batch_size=5, max_wait_ms=10_000,
                   is_device_error=lambda e: isinstance(e, MemoryError))
    results = await asyncio.gather(*(batcher.submit("k", i) for i in range(5)))
    assert [r.value for r in results] == [100, 101, 102, 103, 104]
    assert calls == [5, 2, 3, 1, 2]
    await batcher.close()


async def test_a_device_error_fails_only_the_request_that_fails_alone() -> None:
    """A batch of 5 with one payload the device cannot take: halves, down to that one."""
    calls: list[list[int]] = []

    def run(key: str, payloads: list[int]) -> list[int]:
        calls.append(list(payloads))
        if 3 in payloads:
            raise RuntimeError("input tensor must fit into 32-bit index math")
        return [p + 100 for p in payloads]

    batcher = make(run, max_batch_size=5, max_wait_ms=10_000,
                   is_device_error=lambda e: isinstance(e, RuntimeError))
    results = await asyncio.gather(*(batcher.submit("k", i) for i in range(5)),
                                   return_exceptions=True)
    assert [r.value for r in results if not isinstance(r, Exception)] == [100, 101, 102, 104]
    assert isinstance(results[3], RuntimeError) and "32-bit" in str(results[3])
    assert calls == [[0, 1, 2, 3, 4], [0, 1], [2, 3, 4], [2], [3, 4], [3], [4]]
    await batcher.close()


async def test_other_errors_go_to_the_whole_batch() -> None:
    def run(key: str, payloads: list[int]) -> list[int]:
        raise ValueError("a bug, not the device")

    batcher = make(run, max_batch_size=3, max_wait_ms=10_000,
                   is_device_error=lambda e: isinstance(e, RuntimeError))
    results = await asyncio.gather(*(batcher.submit("k", i) for i in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    await batcher.close()


async def test_close_runs_what_is_queued_then_refuses() -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=64, max_wait_ms=60_000,   # would wait a minute
                   wait_when_idle=True)
    tasks = [asyncio.create_task(batcher.submit("k", i)) for i in range(3)]
    await queued(batcher, 3)
    await batcher.close(timeout_s=10)
    assert [(await t).value for t in tasks] == [0, 2, 4]
    with pytest.raises(BatcherClosed):
        await batcher.submit("k", 1)
