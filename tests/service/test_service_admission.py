"""The admission on its own: every refusal with its status, code and Retry-After, the in-flight
and backlog counts, draining's wait; and that the shedding middleware, /readyz and the
in-flight gauge read it."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import batcher as batching
from service import errors, port_readiness
from service.admission import Admission, Phase
from service.app import create_app
from service.inference import _service_error
from service.metrics import Metrics
from service.middleware import LoadShed


class Queue:
    """Stands in for the batcher's queue depth."""

    def __init__(self) -> None:
        self.queued = 0


def make(queue: Queue | None = None, *, queue_limit: int = 4, max_batch_size: int = 2,
         max_inflight: int = 8, ready: bool = True) -> Admission:
    q = queue or Queue()
    admission = Admission(queue_limit=queue_limit, max_batch_size=max_batch_size,
                          max_inflight=max_inflight, request_timeout_s=30,
                          queue=q)
    if ready:
        admission.mark_ready()
    return admission


def refused(admission: Admission) -> errors.ServiceError:
    refusal = admission.refusal()
    assert refusal is not None
    counts = admission.inflight, admission.backlog
    with pytest.raises(type(refusal)), admission.admitted():
        pass
    assert (admission.inflight, admission.backlog) == counts    # a refusal counts nothing
    return refusal


def shed_body(admission: Admission) -> tuple[dict[bytes, bytes], dict]:
    answer = admission.shed()
    assert answer is not None
    headers, body = answer
    assert dict(headers)[b"content-length"] == str(len(body)).encode()
    return dict(headers), json.loads(body)


def test_starting_is_503_not_ready_with_retry_after_and_not_shed() -> None:
    admission = make(ready=False)
    assert admission.phase is Phase.STARTING
    refusal = refused(admission)
    assert (refusal.status, refusal.code) == (503, "not_ready")
    assert refusal.headers == {"Retry-After": "1"}
    assert admission.shed() is None          # the dependency answers it, with its log line


def test_failed_is_503_not_ready_naming_the_error_without_retry_after() -> None:
    admission = make(ready=False)
    admission.mark_failed("StoreError: no such model")
    admission.mark_ready()                   # a failed start stays failed
    assert admission.phase is Phase.FAILED and admission.error == "StoreError: no such model"
    refusal = refused(admission)
    assert (refusal.status, refusal.code) == (503, "not_ready")
    assert "StoreError: no such model" in refusal.message and "Retry-After" not in refusal.headers
    assert admission.shed() is None


def test_draining_is_503_shutting_down_with_retry_after() -> None:
    admission = make()
    admission.start_draining()
    admission.mark_ready()                   # models finishing their load do not undo it
    assert admission.phase is Phase.DRAINING
    refusal = refused(admission)
    assert (refusal.status, refusal.code, refusal.reason) == (503, "shutting_down", "draining")
    assert refusal.headers == {"Retry-After": "1"}
    assert admission.shed() is None


def test_a_full_batch_queue_is_429_queue_full_on_both_paths() -> None:
    queue = Queue()
    admission = make(queue, queue_limit=4)
    queue.queued = 3
    assert admission.refusal() is None and admission.shed() is None
    queue.queued = 4
    refusal = refused(admission)
    assert (refusal.status, refusal.code) == (429, "queue_full")
    assert refusal.headers == {"Retry-After": "1"}
    assert "4 requests are queued" in refusal.message and "queue limit 4" in refusal.message
    headers, body = shed_body(admission)
    assert headers[b"retry-after"] == b"1" and headers[b"content-type"] == b"application/json"
    assert body == {"error": {"code": "queue_full",
                              "message": "the batch queue is full; retry later"}}


def test_a_full_backlog_is_429_before_the_batch_queue_fills() -> None:
    """Bodies read and not yet answered count up to queue_limit + one batch."""
    admission = make(queue_limit=4, max_batch_size=2)
    holding = []
    for _ in range(6):
        context = admission.admitted()
        ticket = context.__enter__()
        admission.body_read(ticket)
        admission.body_read(ticket)          # counted once however often it is said
        holding.append(context)
    assert admission.backlog == 6 and admission.inflight == 6 and admission.queued == 0
    refusal = refused(admission)
    assert refusal.code == "queue_full" and "6 decoding, queued or computing" in refusal.message
    assert shed_body(admission)[1]["error"]["code"] == "queue_full"
    holding.pop().__exit__(None, None, None)
    assert admission.backlog == 5 and admission.refusal() is None
    for context in holding:
        context.__exit__(None, None, None)
    assert admission.backlog == 0 and admission.inflight == 0


def test_too_many_in_flight_is_429_queue_full() -> None:
    admission = make(max_inflight=2)
    with admission.admitted(), admission.admitted():
        assert admission.inflight == 2 and admission.backlog == 0   # no body read yet
        refusal = refused(admission)
        assert (refusal.status, refusal.code) == (429, "queue_full")
        assert refusal.headers == {"Retry-After": "1"}
        assert "2 requests are in flight (limit 2)" in refusal.message
        assert shed_body(admission)[1]["error"]["message"] == \
            "too many requests are in flight; retry later"
    assert admission.inflight == 0 and admission.refusal() is None


def test_an_admitted_request_leaves_the_counts_however_it_ends() -> None:
    admission = make()
    with pytest.raises(RuntimeError), admission.admitted() as ticket:
        admission.body_read(ticket)
        assert (admission.inflight, admission.backlog) == (1, 1)
        raise RuntimeError("the route failed")
    assert (admission.inflight, admission.backlog) == (0, 0)
    assert not ticket.in_backlog


def test_the_ticket_carries_the_deadline() -> None:
    admission = make()
    before = time.monotonic()
    with admission.admitted() as ticket:
        assert before + 30 <= ticket.deadline <= time.monotonic() + 30


async def test_drain_waits_for_the_admitted_requests() -> None:
    admission = make()
    assert await admission.wait_idle(0.01)
    context = admission.admitted()
    context.__enter__()
    admission.start_draining()
    assert not await admission.wait_idle(0.05)
    waiting = asyncio.create_task(admission.wait_idle(5))
    await asyncio.sleep(0)
    context.__exit__(None, None, None)
    assert await waiting


def test_the_batchers_own_refusals_are_worded_by_the_admission() -> None:
    class Model:
        name = "udnie"

    full = _service_error(Model(), batching.QueueFull("9 requests are already queued (limit 9)"))
    assert (full.status, full.code, full.headers) == (429, "queue_full", {"Retry-After": "1"})
    assert full.message == ("the server is busy: 9 requests are already queued (limit 9); "
                            "retry later")
    closed = _service_error(Model(), batching.BatcherClosed("shut down"))
    assert (closed.status, closed.code, closed.headers) == (503, "shutting_down",
                                                           {"Retry-After": "1"})


async def test_load_shed_answers_from_the_admission_and_counts_it() -> None:
    queue = Queue()
    admission = make(queue, queue_limit=1)
    metrics = Metrics()
    reached: list[str] = []

    async def inner(scope, receive, send) -> None:  # noqa: ANN001
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=LoadShed(inner, admission=admission, metrics=metrics)), base_url="http://t")
    async with client:
        assert (await client.post("/v1/stylize")).status_code == 200
        queue.queued = 1
        shed = await client.post("/v1/stylize")
        assert shed.status_code == 429 and shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["code"] == "queue_full"
        assert (await client.get("/v1/models")).status_code == 200    # only transforms shed
        admission.start_draining()
        assert (await client.post("/v1/superres")).status_code == 200  # the route's 503
    assert reached == ["/v1/stylize", "/v1/models", "/v1/superres"]
    assert metrics.rejections.labels(reason="queue_full")._value.get() == 1


async def test_readyz_waits_for_every_worker_of_the_port(make_settings, tmp_path, monkeypatch
                                                        ) -> None:
    """A worker's own phase is ready, but the port is not until each worker has marked itself
    (service/port_readiness.py; the supervisor makes the folder)."""
    monkeypatch.setenv(port_readiness.ENV, str(tmp_path))
    app = create_app(make_settings(models=["udnie"], workers=2))
    app.state.services.admission.mark_ready()
    port_readiness.mark_ready()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    async with client:
        one = await client.get("/readyz")
        assert one.status_code == 503
        assert one.json() == {"status": "starting", "models": 0,
                              "error": "1 of 2 workers are ready"}
        (tmp_path / "another-worker").touch()
        both = await client.get("/readyz")
        assert both.status_code == 200 and both.json() == {"status": "ready", "models": 0}
    app.state.services.codec_pool.shutdown()
    app.state.services.inference.close()


async def test_readyz_and_the_inflight_gauge_read_the_admission(make_settings) -> None:
    """No lifespan here: nothing loads, so the phases are the test's to set."""
    app = create_app(make_settings(models=["udnie"]))
    admission = app.state.services.admission

    def inflight_gauge() -> float:
        text = app.state.services.metrics.exposition().decode()
        (family,) = [f for f in text_string_to_metric_families(text)
                     if f.name == "service_inflight_requests"]
        return family.samples[0].value

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    async with client:
        starting = await client.get("/readyz")
        assert starting.status_code == 503 and starting.json()["status"] == "starting"
        admission.mark_ready()
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        with admission.admitted():
            assert inflight_gauge() == 1
        assert inflight_gauge() == 0
        admission.start_draining()
        draining = await client.get("/readyz")
        assert draining.status_code == 503 and draining.json()["status"] == "draining"
        admission.mark_failed("LookupError: gone")
        failed = await client.get("/readyz")
        assert failed.status_code == 503
        assert failed.json() == {"status": "failed", "models": 0, "error": "LookupError: gone"}
    app.state.services.codec_pool.shutdown()
    app.state.services.inference.close()
