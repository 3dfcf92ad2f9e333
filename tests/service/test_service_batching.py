"""The service under uvicorn on a real socket: batching, overflow, deadlines, disconnects,
single flight and the batched-equals-alone invariant. The worker is held with a Gate, never
with sleeps that assume a speed."""

from __future__ import annotations

import asyncio
import logging

import httpx
import numpy as np

from service.admission import Phase
from tests.helpers import images
from tests.helpers.models import hold
from tests.helpers.server import running, until

PNG = {"content-type": "image/png"}


async def post(client: httpx.AsyncClient, data: bytes, style: str = "udnie") -> httpx.Response:
    return await client.post(f"/v1/stylize?style={style}", content=data, headers=PNG)


async def test_concurrent_requests_share_forward_passes_and_match_alone(make_settings) -> None:
    settings = make_settings(max_batch_size=8, cache_bytes=0)
    inputs = [images.png(40, 24, seed=i) for i in range(6)]
    async with running(settings) as r:
        gate = hold(r.services, "udnie")
        first = asyncio.create_task(post(r.client, inputs[0]))
        await asyncio.to_thread(gate.entered.wait, 30)
        rest = [asyncio.create_task(post(r.client, data)) for data in inputs[1:]]
        await until(lambda: r.services.batcher.queued == 5, what="5 queued requests")
        assert await r.metric("service_queue_depth", model="udnie") == 5
        gate.release.set()
        batched = [await t for t in [first, *rest]]
        assert [resp.status_code for resp in batched] == [200] * 6
        assert gate.batches == [1, 5]
        assert await r.metric("service_batch_size_count", model="udnie") == 2
        assert await r.metric("service_forward_seconds_count", model="udnie") == 2
        assert await r.metric("service_batch_size_sum", model="udnie") == 6
        assert batched[1].headers["x-cache"] == "miss"

        # The invariant: each output inside the batch equals its output computed alone.
        for data, resp in zip(inputs, batched, strict=True):
            alone = await post(r.client, data)
            a = np.asarray(images.decode(resp.content), dtype=int)
            b = np.asarray(images.decode(alone.content), dtype=int)
            assert a.shape == b.shape == (24, 40, 3)
            assert np.abs(a - b).max() <= 1
        assert gate.batches[2:] == [1] * 6


async def test_full_queue_gives_429_with_retry_after(make_settings) -> None:
    async with running(make_settings(queue_limit=2)) as r:
        gate = hold(r.services, "udnie")
        first = asyncio.create_task(post(r.client, images.png(seed=1)))
        await asyncio.to_thread(gate.entered.wait, 30)
        queued = [asyncio.create_task(post(r.client, images.png(seed=s))) for s in (2, 3)]
        await until(lambda: r.services.batcher.queued == 2, what="2 queued requests")
        over = await post(r.client, images.png(seed=4))
        assert over.status_code == 429
        assert over.headers["retry-after"] == "1"
        assert over.json()["error"]["code"] == "queue_full"
        gate.release.set()
        assert [(await t).status_code for t in [first, *queued]] == [200, 200, 200]
        assert await r.metric("service_rejections_total", reason="queue_full") == 1


async def test_deadline_passing_in_the_queue_gives_504_and_never_runs(make_settings) -> None:
    async with running(make_settings(request_timeout_s=1.5)) as r:
        gate = hold(r.services, "udnie")
        first = asyncio.create_task(post(r.client, images.png(seed=1)))
        await asyncio.to_thread(gate.entered.wait, 30)
        late = await post(r.client, images.png(seed=2))   # queued behind the held batch
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "deadline_exceeded"
        gate.release.set()
        assert (await first).status_code == 200           # started in time: finishes
        assert gate.batches == [1]
        assert await r.metric("service_rejections_total", reason="deadline") == 1


async def test_a_disconnected_clients_request_never_runs(make_settings, caplog) -> None:
    caplog.set_level(logging.INFO, "service.access")
    async with running(make_settings()) as r:
        gate = hold(r.services, "udnie")
        first = asyncio.create_task(post(r.client, images.png(seed=1)))
        await asyncio.to_thread(gate.entered.wait, 30)
        async with httpx.AsyncClient(base_url=r.url, timeout=60) as impatient:
            gone = asyncio.create_task(post(impatient, images.png(seed=2)))
            await until(lambda: r.services.batcher.queued == 1, what="a queued request")
            gone.cancel()                                  # closes its connection
        await until(lambda: r.services.batcher.queued == 0, what="the request to leave")
        await until(lambda: r.metric("service_rejections_total", reason="client_disconnected"),
                    what="the disconnect to be counted")
        gate.release.set()
        assert (await first).status_code == 200
        assert gate.batches == [1]                         # the second never reached the model
        assert await r.metric("service_inflight_requests") == 0
    (gone_line,) = [rec for rec in caplog.records
                    if rec.name == "service.access" and rec.status == 499]
    assert gone_line.path == "/v1/stylize" and gone_line.duration_ms > 0


async def test_identical_concurrent_requests_compute_once(make_settings) -> None:
    data = images.png(seed=9)
    async with running(make_settings()) as r:
        gate = hold(r.services, "udnie")
        tasks = [asyncio.create_task(post(r.client, data))]
        await asyncio.to_thread(gate.entered.wait, 30)
        tasks += [asyncio.create_task(post(r.client, data)) for _ in range(3)]
        await until(lambda: r.services.inference.flights.waiting() == 4,
                    what="4 callers on one flight")
        gate.release.set()
        responses = [await t for t in tasks]
        assert [resp.status_code for resp in responses] == [200] * 4
        assert len({resp.content for resp in responses}) == 1
        assert sorted(resp.headers["x-cache"] for resp in responses) == ["hit"] * 3 + ["miss"]
        assert gate.batches == [1]
        assert await r.metric("service_singleflight_shared_total") == 3

        again = await post(r.client, data)                 # now from the cache
        assert again.headers["x-cache"] == "hit" and again.content == responses[0].content
        assert gate.batches == [1]
        assert await r.metric("service_cache_hits_total", backend="memory") == 1


async def test_drain_refuses_new_requests_and_finishes_admitted_ones(make_settings) -> None:
    async with running(make_settings()) as r:
        gate = hold(r.services, "udnie")
        first = asyncio.create_task(post(r.client, images.png(seed=1)))
        await asyncio.to_thread(gate.entered.wait, 30)
        drain = asyncio.create_task(r.services.drain())
        await until(lambda: r.services.admission.phase is Phase.DRAINING, what="draining")
        ready = await r.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        refused = await post(r.client, images.png(seed=2))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        assert "retry-after" in refused.headers
        assert not drain.done()
        gate.release.set()
        assert (await first).status_code == 200
        assert await drain is True
        assert await r.metric("service_rejections_total", reason="draining") == 1


async def test_too_many_in_flight_gives_429(make_settings) -> None:
    async with running(make_settings(max_inflight=1)) as r:
        gate = hold(r.services, "udnie")
        first = asyncio.create_task(post(r.client, images.png(seed=1)))
        await asyncio.to_thread(gate.entered.wait, 30)
        over = await post(r.client, images.png(seed=2))
        assert over.status_code == 429 and "in flight" in over.json()["error"]["message"]
        gate.release.set()
        assert (await first).status_code == 200
