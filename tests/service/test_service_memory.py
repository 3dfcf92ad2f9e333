"""The memory budget: requests that do not fit wait, then get 503; one that never fits, 413."""

from __future__ import annotations

import asyncio
import time

import pytest

from service import errors
from service.activations import CPU_PASS_TENSORS
from service.memory import MemoryBudget, MiB
from tests.helpers import images
from tests.helpers.server import running


async def test_a_reservation_waits_for_memory_to_be_freed():
    budget = MemoryBudget(10 * MiB)
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with budget.reserve(8 * MiB, time.monotonic() + 5, "first"):
            order.append("first in")
            first_in.set()
            await release.wait()
        order.append("first out")

    async def second() -> None:
        await first_in.wait()
        async with budget.reserve(4 * MiB, time.monotonic() + 5, "second"):
            order.append("second in")
            assert budget.used == 4 * MiB

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await first_in.wait()
    await asyncio.sleep(0.05)
    assert order == ["first in"] and budget.used == 8 * MiB     # second waits: 12 > 10
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"] and budget.used == 0


async def test_never_fitting_is_413_and_waiting_past_the_deadline_is_503():
    budget = MemoryBudget(10 * MiB)
    with pytest.raises(errors.ImageTooLarge, match="about 11 MiB of memory, over this "
                                                   "server's 10 MiB budget"):
        async with budget.reserve(11 * MiB, time.monotonic() + 5, "a 9x9 image"):
            pass
    async with budget.reserve(8 * MiB, time.monotonic() + 5, "held"):
        started = time.monotonic()
        with pytest.raises(errors.WouldMissDeadline) as e:
            async with budget.reserve(4 * MiB, time.monotonic() + 0.2, "late"):
                pass
        assert 0.15 < time.monotonic() - started < 2
        assert e.value.headers["Retry-After"] == "1"
    assert budget.used == 0
    async with MemoryBudget(None).reserve(1 << 60, 0.0, "anything"):   # no budget
        pass


async def test_the_service_refuses_an_image_over_its_budget(make_settings):
    settings = make_settings(models=["udnie"], cache_bytes=0, memory_budget_bytes=4 * MiB,
                             tile_size=1024)
    async with running(settings) as r:
        small = await r.client.post("/v1/stylize?style=udnie", content=images.png(16, 16),
                                    headers={"content-type": "image/png"})
        assert small.status_code == 200
        big = await r.client.post("/v1/stylize?style=udnie", content=images.png(200, 160),
                                  headers={"content-type": "image/png"})
        assert big.status_code == 413
        error = big.json()["error"]
        assert error["code"] == "image_too_large"
        assert "a 200x160 image on udnie needs about" in error["message"]
        assert "4 MiB budget" in error["message"]
        inference = r.services.inference
        (model,) = r.services.registry.models()
        assert (inference.predicted_bytes(model, 160, 200, True)      # 4 x the pixels
                > 3 * inference.predicted_bytes(model, 80, 100, True))
        assert inference.memory.used == 0


async def test_a_tiled_image_fits_the_default_budget_with_its_tile_batches_bounded(
        make_settings):
    async with running(make_settings(models=["sr8"], cache_bytes=0)) as r:
        (model,) = r.services.registry.models()
        budget = r.services.settings.memory_budget_bytes
        # on the CPU a pass holds CPU_PASS_TENSORS of its largest tensor; half the budget
        assert r.services.registry.max_activation_bytes == int(budget / 2 / CPU_PASS_TENSORS)
        # 1024x1024 at x8: 64-px tiles (128 at x4: the same output), whose largest tensor is
        # 64 x 512 x 512 floats, 64 MiB: 8 would hold 1.75 GiB in one pass; the batches are cut
        # to fit half the budget
        assert r.services.inference.tiling.tile_for(8) == (64, 16)
        assert r.services.batcher.limit(("sr8", 64, 64)) == 2
        predicted = r.services.inference.predicted_bytes(model, 1024, 1024, True)
        output = (1024 * 8) ** 2 * 3                       # the uint8 result, 192 MiB
        assert 2 * output < predicted <= budget
