"""Faults and hostile clients: a model that raises, Redis killed and restarted, clients that go
away in bulk, bodies and heads slower than their timeouts, oversized URLs and headers.

The batch worker is held with a Gate where the order of events matters; waits are polls on
the service's own state, never sleeps that assume a speed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from torch import nn

from bench.hostile import Limits, corpus, send
from bench.server import free_port
from service.app import create_app
from service.middleware import bounded_http_protocol
from tests.helpers import images, redis_server
from tests.helpers.models import hold
from tests.helpers.server import running, until

PNG = {"content-type": "image/png"}


class RaisesOnBlack(nn.Module):
    """A model whose forward raises when any image of the batch is all black (fault injection,
    not a mock: everything else is the real network)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.failed_batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.flatten(1).amax(dim=1) == 0).any():
            self.failed_batches.append(x.shape[0])
            raise RuntimeError("injected fault: a black image")
        return self.inner(x)


def black_png(width: int, height: int) -> bytes:
    from PIL import Image

    return images.encode(Image.fromarray(np.zeros((height, width, 3), np.uint8)))


async def test_a_raising_model_fails_only_the_request_that_fails_alone(make_settings) -> None:
    """The batch of the black image and its neighbour raises (a RuntimeError, as a device's
    errors are), so it is retried in halves: the neighbour is answered, the black image alone
    fails, and the worker goes on."""
    async with running(make_settings(max_batch_size=8)) as r:
        udnie = r.services.registry.get("udnie")
        faulty = RaisesOnBlack(udnie.module)
        udnie.module = faulty
        gate = hold(r.services, "candy")           # holds the worker while udnie's queue fills
        held = asyncio.create_task(r.client.post("/v1/stylize?style=candy",
                                                 content=images.png(seed=1), headers=PNG))
        await asyncio.to_thread(gate.entered.wait, 30)

        def post(data: bytes) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(r.client.post("/v1/stylize?style=udnie", content=data,
                                                     headers=PNG))

        black = post(black_png(32, 32))              # batch (udnie, 32, 32): black + a neighbour
        neighbour = post(images.png(32, 32, seed=2))
        other_shape = post(images.png(48, 32, seed=3))   # batch (udnie, 32, 48): no black
        await until(lambda: r.services.batcher.queued == 3, what="3 queued requests")
        gate.release.set()

        assert (await held).status_code == 200
        resp = await black
        assert resp.status_code == 500
        assert resp.json()["error"]["code"] == "compute_failed"
        assert "injected fault" in resp.json()["error"]["message"]
        assert (await neighbour).status_code == 200
        assert (await other_shape).status_code == 200
        assert faulty.failed_batches == [2, 1]
        # The worker goes on: the same shape again, alone, is fine.
        again = await r.client.post("/v1/stylize?style=udnie", content=images.png(32, 32, seed=4),
                                    headers=PNG)
        assert again.status_code == 200
        assert r.services.batcher.queued == 0 and len(r.services.inference.flights) == 0
        assert await r.metric("service_rejections_total", reason="compute_failed") == 1
        assert await r.metric("service_inflight_requests") == 0


@asynccontextmanager
async def redis_on(port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    """redis-server on a given port (so it can come back on the same one), killed at the end;
    started in a thread, so that the app goes on serving while it comes up."""
    with contextlib.ExitStack() as stack:
        yield await asyncio.to_thread(stack.enter_context, redis_server.redis_on(port))


async def test_redis_killed_and_restarted_fails_nothing_and_the_cache_comes_back(
        make_settings) -> None:
    port = free_port()
    settings = make_settings(models=["udnie"], redis_url=f"redis://127.0.0.1:{port}/0",
                             redis_timeout_s=0.5)
    async with redis_on(port) as first, running(settings) as r:
        async def post(seed: int) -> httpx.Response:
            resp = await r.client.post("/v1/stylize?style=udnie",
                                       content=images.png(seed=seed), headers=PNG)
            assert resp.status_code == 200, resp.text
            return resp

        assert (await post(1)).headers["x-cache"] == "miss"
        assert (await post(1)).headers["x-cache"] == "hit"
        first.kill()
        first.wait(timeout=10)
        for seed in (1, 2, 3):                         # computed, not failed
            assert (await post(seed)).headers["x-cache"] == "miss"
        async with redis_on(port):
            # No restart of the app and no reconnect call: the client reconnects by itself.
            async def cached_again() -> bool:
                return (await post(4)).headers["x-cache"] == "hit"

            await until(cached_again, timeout_s=20, what="the cache to come back")
        assert await r.metric("service_cache_errors_total", backend="redis") >= 3
        for status in ("500", "503", "504"):
            assert await r.metric("service_request_duration_seconds_count", status=status) == 0


async def test_clients_going_away_in_bulk_leave_nothing_behind(make_settings) -> None:
    """20 clients leave: 10 while queued behind a held batch, 10 halfway through their body.
    Queue depth, in-flight count and single-flight calls all come back to what remains."""
    async with running(make_settings(models=["udnie"], max_batch_size=4)) as r:
        gate = hold(r.services, "udnie")
        held = asyncio.create_task(r.client.post("/v1/stylize?style=udnie",
                                                 content=images.png(seed=100), headers=PNG))
        await asyncio.to_thread(gate.entered.wait, 30)
        parts = urlsplit(r.url)
        writers: list[asyncio.StreamWriter] = []
        for i in range(20):
            body = images.png(seed=i)
            sent = body if i < 10 else body[: len(body) // 2]
            _, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(f"POST /v1/stylize?style=udnie HTTP/1.1\r\nHost: t\r\n"
                         f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + sent)
            await writer.drain()
            writers.append(writer)
        admission = r.services.admission
        await until(lambda: r.services.batcher.queued == 10 and admission.inflight == 21,
                    what="10 queued and 10 reading their body")
        assert await r.metric("service_queue_depth", model="udnie") == 10
        for writer in writers:                           # all at once, mid-request
            writer.transport.abort()
        # A cancelled flight is forgotten by its task's done callback, a loop step later.
        await until(lambda: r.services.batcher.queued == 0 and admission.inflight == 1
                    and len(r.services.inference.flights) == 1, what="the 20 to be forgotten")
        assert len(r.services.inference.flights) == 1    # only the held request's
        assert admission.backlog == 1
        assert await r.metric("service_queue_depth", model="udnie") == 0
        gate.release.set()
        assert (await held).status_code == 200
        assert gate.batches == [1]                       # none of the 20 reached the model
        await until(lambda: admission.inflight == 0, what="nothing in flight")
        assert len(r.services.inference.flights) == 0 and admission.backlog == 0
        assert await r.metric("service_rejections_total", reason="client_disconnected") == 20
        ok = await r.client.post("/v1/stylize?style=udnie", content=images.png(seed=200),
                                 headers=PNG)
        assert ok.status_code == 200


async def test_a_flood_past_the_backlog_is_shed_at_the_door(make_settings) -> None:
    """With the worker held, one batch computing and the queue full, further requests get 429
    from the outermost middleware: no body read, no decode, no access-log line."""
    async with running(make_settings(models=["udnie"], queue_limit=2, max_batch_size=1)) as r:
        gate = hold(r.services, "udnie")
        admission = r.services.admission

        def post(seed: int) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(r.client.post(
                "/v1/stylize?style=udnie", content=images.png(seed=seed), headers=PNG))

        admitted = [post(1)]
        await asyncio.to_thread(gate.entered.wait, 30)
        for seed, queued in ((2, 1), (3, 2)):
            admitted.append(post(seed))
            await until(lambda q=queued: r.services.batcher.queued == q, what=f"{queued} queued")
        assert admission.backlog == 3                     # queue limit 2 + a batch of 1
        decodes = await r.metric("service_decode_seconds_count")
        flood = await asyncio.gather(*(post(10 + i) for i in range(10)))
        assert {resp.status_code for resp in flood} == {429}
        assert all(resp.headers["retry-after"] == "1" and
                   resp.json()["error"]["code"] == "queue_full" for resp in flood)
        assert await r.metric("service_decode_seconds_count") == decodes   # none decoded
        assert await r.metric("service_request_duration_seconds_count", status="429") == 0
        assert await r.metric("service_rejections_total", reason="queue_full") == 10
        gate.release.set()
        assert [(await t).status_code for t in admitted] == [200, 200, 200]
        await until(lambda: admission.backlog == 0, what="an empty backlog")


async def raw(url: str, data: bytes, *, timeout_s: float = 10) -> bytes:
    """Send bytes on a new connection; return everything the server sends until it closes."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


async def test_a_body_slower_than_the_timeout_is_408(make_settings) -> None:
    async with running(make_settings(models=["udnie"], body_timeout_s=0.5)) as r:
        answer = await raw(r.url, b"POST /v1/stylize?style=udnie HTTP/1.1\r\nHost: t\r\n"
                                  b"Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                                  + images.png()[:10])
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split()[1] == b"408" and b"connection: close" in head.lower()
        assert b'"request_timeout"' in body
        assert await r.metric("service_inflight_requests") == 0


async def test_oversized_urls_and_headers_get_414_and_431(make_settings) -> None:
    async with running(make_settings(models=["udnie"], max_url_bytes=1024,
                                     max_header_bytes=2048)) as r:
        long_query = await r.client.post("/v1/stylize?style=udnie&x=" + "a" * 2000,
                                         content=images.png(), headers=PNG)
        assert long_query.status_code == 414
        assert long_query.json()["error"]["code"] == "url_too_long"
        big_header = await r.client.post("/v1/stylize?style=udnie", content=images.png(),
                                         headers={**PNG, "x-junk": "a" * 3000})
        assert big_header.status_code == 431
        assert big_header.json()["error"]["code"] == "headers_too_large"
        many = {f"x-h{i}": "v" * 20 for i in range(200)}
        assert (await r.client.get("/healthz", headers=many)).status_code == 431
        assert (await r.client.get("/healthz", headers={"x-fine": "a" * 1000})).status_code == 200


@asynccontextmanager
async def bounded_server(settings, **protocol: float) -> AsyncIterator[str]:  # noqa: ANN001
    """The app under uvicorn with the bounded-head protocol that `python -m service` uses."""
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on",
                            http=bounded_http_protocol(**protocol))  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), what="uvicorn to start")
        await app.state.services.wait_ready()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_the_server_bounds_the_request_head_in_bytes_and_time(make_settings) -> None:
    async with bounded_server(make_settings(models=["udnie"]), max_head_bytes=8192,
                              head_timeout_s=0.5) as url:
        parts = urlsplit(url)
        # A header that never ends, sent 1 KB at a time: refused once 8 KB have come.
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Endless: ")

        async def flood() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"a" * 1024)
                    await writer.drain()

        flooding = asyncio.create_task(flood())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            body = await asyncio.wait_for(reader.read(), 10)     # then it closes
        finally:
            flooding.cancel()
            writer.close()
        assert head.split()[1] == b"431" and b'"headers_too_large"' in body

        # A head sent slowly and never finished: 408 after the head timeout.
        answer = await raw(url, b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        assert answer.split()[1] == b"408" and b'"request_timeout"' in answer

        # Normal requests, two on one kept-alive connection, are untouched.
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(2):
                assert (await client.get("/healthz")).status_code == 200
            await asyncio.sleep(0.7)                     # idle past the head timeout: fine
            assert (await client.get("/readyz")).status_code == 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # we refuse those
async def test_the_hostile_corpus_gets_the_answers_it_is_owed(make_settings) -> None:
    """Every case of bench/hostile.py (the corpus `python -m bench reliability` reports on)
    gets its expected status and error code, in time; nothing is a 5xx; nothing stays."""
    limits = Limits(max_body_bytes=8 * 2**20, max_pixels=256 * 256, max_url_bytes=4096,
                    max_header_bytes=8192, body_timeout_s=0.5, header_timeout_s=0.5)
    settings = make_settings(max_body_bytes=limits.max_body_bytes, max_pixels=limits.max_pixels,
                             max_url_bytes=limits.max_url_bytes,
                             max_header_bytes=limits.max_header_bytes,
                             body_timeout_s=limits.body_timeout_s,
                             header_timeout_s=limits.header_timeout_s)
    cases = corpus(limits, style="udnie", factor=4)
    assert len(cases) >= 40
    async with bounded_server(settings, max_head_bytes=2 * (limits.max_url_bytes
                                                             + limits.max_header_bytes),
                              head_timeout_s=limits.header_timeout_s) as url:
        parts = urlsplit(url)
        wrong = []
        for case in cases:
            outcome = await send(parts.hostname, parts.port, case, timeout_s=30)
            if not outcome.matches(case):
                wrong.append(f"{case.name}: expected {case.status} {case.code}, got "
                             f"{outcome.status} {outcome.code} {outcome.error or ''}")
        assert not wrong, "\n".join(wrong)
        async with httpx.AsyncClient(base_url=url) as client:
            text = (await client.get("/metrics")).text
        assert "service_inflight_requests 0.0" in text
        assert 'status="5' not in text
