"""Jobs (service/jobs.py, service/job_runner.py): submitted over HTTP, run by the replica,
polled for progress, fetched; the same answer as the synchronous route, with the job's own
time limit; bounded; per API key; and in Redis, taken over when the replica running one dies."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from pathlib import Path

import pytest
from PIL import Image
from torch import nn

from bench.server import launch
from service.jobs import Job, JobQueueFull, MemoryJobs, RedisJobs
from service.policy import ModelPolicy, SizeChoice
from tests.helpers import images
from tests.helpers.models import hold
from tests.helpers.server import running, until

PNG = {"content-type": "image/png"}
# Tiles of 16 input pixels overlapping by 4: 3 rows x 2 columns for a 24 x 40 image (as in
# test_service_admission_by_time), tiled since its x4 output is over 64 x 64 pixels.
TILED = dict(tile_threshold_pixels=64 * 64, superres_tile_size=16, superres_tile_overlap=4)


async def finished(client, url: str, timeout_s: float = 60,  # noqa: ANN001
                   headers: dict[str, str] | None = None) -> dict:
    """Poll a job's status until it is done or failed."""
    end = time.monotonic() + timeout_s
    while True:
        status = (await client.get(url, headers=headers)).json()
        if status["state"] in ("done", "failed"):
            return status
        assert time.monotonic() < end, f"the job did not finish: {status}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("norm_stats", ["image", "tile"])
async def test_a_tiled_job_gives_the_synchronous_answer_and_counts_its_tiles(
        make_settings, norm_stats):
    settings = make_settings(models=["sr4"], cache_bytes=0, tile_norm_stats=norm_stats, **TILED)
    async with running(settings) as r:
        body = images.png(24, 40)
        submitted = await r.client.post("/v1/jobs/superres?factor=4", content=body, headers=PNG)
        assert submitted.status_code == 202
        job = submitted.json()
        assert submitted.headers["location"] == job["url"] == f"/v1/jobs/{job['id']}"
        assert job["kind"] == "superres" and job["state"] == "queued" and job["result"] is None
        status = await finished(r.client, job["url"])
        assert status["state"] == "done" and status["attempts"] == 1 and status["error"] is None
        # image statistics: a pass per instance norm to measure them, then the outputs
        norms = sum(isinstance(m, nn.InstanceNorm2d)
                    for m in r.services.registry.get("sr4").module.modules())
        tiles = 3 * 2 * (norms + 1 if norm_stats == "image" else 1)
        assert status["progress"] == {"done": tiles, "total": tiles}
        result = await r.client.get(status["result"])
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        direct = await r.client.post("/v1/superres?factor=4", content=body, headers=PNG)
        assert result.content == direct.content
        assert Image.open(io.BytesIO(result.content)).size == (96, 160)
        assert await r.metric("service_jobs_total", kind="superres", result="done") == 1


async def test_a_style_job_keeps_the_style_and_output_options(make_settings):
    async with running(make_settings(models=["udnie"], cache_bytes=0)) as r:
        query = "style=udnie&strength=0.5&preserve_color=true&format=jpeg&quality=70"
        body = images.png(40, 24)
        job = (await r.client.post(f"/v1/jobs/stylize?{query}", content=body,
                                   headers=PNG)).json()
        status = await finished(r.client, job["url"])
        assert status["kind"] == "stylize" and status["progress"] == {"done": 1, "total": 1}
        result = await r.client.get(status["result"])
        assert result.headers["content-type"] == "image/jpeg"
        direct = await r.client.post(f"/v1/stylize?{query}", content=body, headers=PNG)
        assert result.content == direct.content


def measured(ms_per_image: float, side: int = 32) -> ModelPolicy:
    return ModelPolicy("measured", [SizeChoice(side, "base", 4, {1: ms_per_image})],
                       SizeChoice(0, "base", 4))


async def test_work_too_slow_for_a_request_runs_as_a_job_within_the_job_limit(make_settings):
    settings = make_settings(models=["udnie"], request_timeout_s=5, job_timeout_s=60)
    async with running(settings) as r:
        r.services.registry.get("udnie").policy = measured(2000.0)   # 64 x 64: about 8 s
        body = images.png(64, 64)
        refused = await r.client.post("/v1/stylize?style=udnie", content=body, headers=PNG)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_slow"
        job = (await r.client.post("/v1/jobs/stylize?style=udnie", content=body,
                                   headers=PNG)).json()
        assert (await finished(r.client, job["url"]))["state"] == "done"
        r.services.registry.get("udnie").policy = measured(20_000.0)  # about 80 s: over 60
        over = await r.client.post("/v1/jobs/stylize?style=udnie", content=body, headers=PNG)
        assert over.status_code == 413
        error = over.json()["error"]
        assert error["code"] == "too_slow" and "60 s limit" in error["message"]


async def test_bad_input_is_refused_when_submitted(make_settings):
    async with running(make_settings(models=["udnie", "sr4"])) as r:
        cases = [
            ("/v1/jobs/stylize?style=udnie", b"not an image", 400, "invalid_image"),
            ("/v1/jobs/stylize?style=nope", images.png(), 404, "unknown_model"),
            ("/v1/jobs/superres?factor=3", images.png(), 404, "unknown_model"),
            ("/v1/jobs/stylize?style=udnie&strength=2", images.png(), 422,
             "invalid_parameter"),
            ("/v1/jobs/superres?factor=4", images.png(2000, 1000), 413, "image_too_large"),
        ]
        for url, body, status, code in cases:
            answer = await r.client.post(url, content=body, headers=PNG)
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), url
        text = await r.client.post("/v1/jobs/stylize?style=udnie", content=b"hi",
                                   headers={"content-type": "text/plain"})
        assert text.status_code == 415
        assert (await r.client.get("/v1/jobs/not-an-id")).status_code == 422
        unknown = await r.client.get("/v1/jobs/" + "A" * 22)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_job"
        assert (await r.client.get("/v1/jobs/" + "A" * 22 + "/result")).status_code == 404
        assert await r.metric("service_jobs_total", result="submitted") == 0


async def test_the_queue_is_bounded_and_the_result_waits_for_the_job(make_settings):
    async with running(make_settings(models=["udnie"], job_queue_limit=2)) as r:
        gate = hold(r.services, "udnie")
        urls = []
        for seed in range(2):   # one running (held at the gate), one queued
            answer = await r.client.post("/v1/jobs/stylize?style=udnie",
                                         content=images.png(seed=seed), headers=PNG)
            assert answer.status_code == 202
            urls.append(answer.json()["url"])
        await until(gate.entered.is_set, what="the first job at the gate")
        assert (await r.client.get(urls[0])).json()["state"] == "running"
        assert (await r.client.get(urls[1])).json()["state"] == "queued"
        full = await r.client.post("/v1/jobs/stylize?style=udnie", content=images.png(seed=2),
                                   headers=PNG)
        assert full.status_code == 429 and full.json()["error"]["code"] == "job_queue_full"
        assert int(full.headers["retry-after"]) >= 1
        early = await r.client.get(urls[0] + "/result")
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_done"
        assert early.headers["retry-after"] == "1"
        gate.release.set()
        for url in urls:
            assert (await finished(r.client, url))["state"] == "done"
        again = await r.client.post("/v1/jobs/stylize?style=udnie", content=images.png(seed=2),
                                    headers=PNG)
        assert again.status_code == 202


async def test_a_job_that_fails_says_why(make_settings, monkeypatch):
    async with running(make_settings(models=["udnie"])) as r:
        registry = r.services.registry
        gate = hold(r.services, "udnie")
        first = (await r.client.post("/v1/jobs/stylize?style=udnie", content=images.png(),
                                     headers=PNG)).json()
        await until(gate.entered.is_set, what="the first job at the gate")
        second = (await r.client.post("/v1/jobs/stylize?style=udnie",
                                      content=images.png(seed=1), headers=PNG)).json()
        monkeypatch.setattr(registry, "get", lambda name: None)   # the model is removed
        gate.release.set()
        assert (await finished(r.client, first["url"]))["state"] == "done"
        status = await finished(r.client, second["url"])
        assert status["state"] == "failed" and status["result"] is None
        assert status["error"]["code"] == "unknown_model"
        assert "udnie is no longer served" in status["error"]["message"]
        result = await r.client.get(second["url"] + "/result")
        assert result.status_code == 409 and result.json()["error"]["code"] == "job_failed"
        assert await r.metric("service_jobs_total", kind="stylize", result="failed") == 1


async def test_a_job_belongs_to_the_key_that_submitted_it(make_settings):
    async with running(make_settings(models=["udnie"], api_keys="key-one,key-two")) as r:
        one, two = {"x-api-key": "key-one"}, {"x-api-key": "key-two"}
        assert (await r.client.post("/v1/jobs/stylize?style=udnie", content=images.png(),
                                    headers=PNG)).status_code == 401
        job = (await r.client.post("/v1/jobs/stylize?style=udnie", content=images.png(),
                                   headers={**PNG, **one})).json()
        assert (await r.client.get(job["url"])).status_code == 401
        assert (await r.client.get(job["url"], headers=two)).status_code == 404
        assert (await r.client.get(job["url"], headers=one)).status_code == 200
        status = await finished(r.client, job["url"], headers=one)
        assert (await r.client.get(status["result"], headers=two)).status_code == 404
        assert (await r.client.get(status["result"], headers=one)).status_code == 200


# -- Redis ----------------------------------------------------------------------------------


def stub_costs(folder: Path) -> tuple[Path, Path]:
    """Stub device costs: a slow one (0.3 s a 64-px tile out) and a fast one (1 ms)."""
    slow, fast = folder / "slow.json", folder / "fast.json"
    slow.write_text(json.dumps({"side": 64, "batch_ms": {"1": 300}}))
    fast.write_text(json.dumps({"side": 64, "batch_ms": {"1": 1}}))
    return slow, fast


@pytest.fixture
def prefix(request) -> str:  # noqa: ANN001
    """Keys of this test only."""
    return f"test-jobs-{request.node.name}-{time.time_ns()}:"


async def test_jobs_live_in_redis_with_their_ttl(make_settings, redis_url, prefix):
    from redis.asyncio import Redis

    settings = make_settings(models=["sr4"], redis_url=redis_url, redis_key_prefix=prefix,
                             job_ttl_s=120, cache_bytes=0)
    async with running(settings) as r:
        assert r.services.jobs.store.backend == "redis"
        body = images.png(24, 40)
        job = (await r.client.post("/v1/jobs/superres?factor=4", content=body,
                                   headers=PNG)).json()
        status = await finished(r.client, job["url"])
        result = await r.client.get(status["result"])
        direct = await r.client.post("/v1/superres?factor=4", content=body, headers=PNG)
        assert result.content == direct.content
    client = Redis.from_url(redis_url)
    try:
        record = json.loads(await client.get(f"{prefix}job:{job['id']}"))
        assert record["state"] == "done" and record["spec"]["model"] == "sr4"
        assert await client.get(f"{prefix}job:{job['id']}:out") == result.content
        assert not await client.exists(f"{prefix}job:{job['id']}:in")   # dropped when done
        for part in ("", ":out"):
            assert 0 < await client.ttl(f"{prefix}job:{job['id']}{part}") <= 120
        assert await client.llen(f"{prefix}jobs:queue") == 0
        assert await client.zcard(f"{prefix}jobs:leases") == 0
    finally:
        await client.aclose()


async def test_a_job_whose_replica_dies_is_run_by_another(make_settings, redis_url, prefix,
                                                          store_root: Path, tmp_path: Path):
    """Replica A, a real process, claims the job and is killed (SIGKILL) while running it;
    replica B sees the lease run out, queues the job again and runs it to the end."""
    slow, fast = stub_costs(tmp_path)
    shared = {"SERVICE_MODEL_STORE": str(store_root), "SERVICE_MODELS": "sr4",
              "SERVICE_DEVICE": "stub", "SERVICE_REDIS_URL": redis_url,
              "SERVICE_REDIS_KEY_PREFIX": prefix, "SERVICE_JOB_LEASE_S": "1",
              "SERVICE_TILE_NORM_STATS": "tile", "SERVICE_MAX_BATCH_SIZE": "1",
              **{f"SERVICE_{k.upper()}": str(v) for k, v in TILED.items()}}
    body = images.png(64, 64)          # 5 x 5 tiles (a step of 12): 7.5 s on A's device
    with launch({**shared, "SERVICE_STUB_COST": str(slow)}, tmp_path / "a.log") as a:
        a.wait_ready(120)
        import httpx

        async with httpx.AsyncClient(base_url=a.url) as client:
            job = (await client.post("/v1/jobs/superres?factor=4", content=body,
                                     headers=PNG)).json()

            async def started() -> bool:
                return (await client.get(job["url"])).json()["progress"]["done"] > 0

            await until(started, what="replica A computing the job")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
    settings = make_settings(models=["sr4"], device="stub", stub_cost=fast, redis_url=redis_url,
                             redis_key_prefix=prefix, job_lease_s=1, tile_norm_stats="tile",
                             max_batch_size=1, **TILED)
    async with running(settings) as b:
        status = await finished(b.client, job["url"])
        assert status["state"] == "done" and status["attempts"] == 2
        assert status["progress"] == {"done": 25, "total": 25}
        result = await b.client.get(status["result"])
        assert Image.open(io.BytesIO(result.content)).size == (256, 256)
        assert await b.metric("service_jobs_total", result="requeued") == 1


# -- the stores themselves ------------------------------------------------------------------


async def test_memory_jobs_expire_and_keep_a_bounded_amount_of_results():
    store = MemoryJobs(limit=8, ttl_s=0.3, max_result_bytes=250)
    jobs = [Job(f"{i:022d}", "stylize", {}) for i in range(3)]
    for job in jobs:
        await store.submit(job, b"input")
        claimed, data = await store.claim("me", lease_s=10, wait_s=0)
        assert claimed.id == job.id and data == b"input" and claimed.state == "running"
        claimed.state = "done"
        assert await store.finish(claimed, "me", bytes(100))
    # 300 bytes of results over a 250 budget: the oldest job is dropped, result and record
    assert await store.get(jobs[0].id) is None and await store.result(jobs[0].id) is None
    assert await store.result(jobs[2].id) == bytes(100)
    await asyncio.sleep(0.35)
    assert await store.get(jobs[2].id) is None                    # past its TTL
    assert await store.claim("me", lease_s=10, wait_s=0.05) is None


async def test_memory_jobs_keep_a_bounded_number_of_ended_records():
    store = MemoryJobs(limit=8, ttl_s=60, max_result_bytes=1000, max_records=3)
    ended = []
    for i in range(4):
        await store.submit(Job(f"{i:022d}", "stylize", {}), b"in")
        job, _ = await store.claim("me", lease_s=10, wait_s=0)
        job.state = "failed"
        await store.finish(job, "me", None)
        ended.append(job.id)
    queued = Job("Q" * 22, "stylize", {})
    await store.submit(queued, b"in")           # past 3 records, the oldest ended ones go
    assert [await store.get(i) is not None for i in ended] == [False, False, True, True]
    assert (await store.get(queued.id)).state == "queued"


async def test_redis_jobs_a_lost_lease_saves_nothing(redis_url, prefix):
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    store = RedisJobs(client, limit=2, ttl_s=60, prefix=prefix)
    try:
        job = Job("B" * 22, "superres", {"model": "sr4"})
        await store.submit(job, b"pixels")
        await store.submit(Job("C" * 22, "superres", {}), b"more")
        with pytest.raises(JobQueueFull):
            await store.submit(Job("D" * 22, "superres", {}), b"full")
        first, data = await store.claim("a", lease_s=0.2, wait_s=0)
        assert first.id == job.id and data == b"pixels" and first.attempts == 1
        assert (await store.get(job.id)).state == "running"
        await asyncio.sleep(0.3)
        assert await store.requeue_expired() == [job.id]
        assert (await store.get(job.id)).state == "queued"
        assert not await store.heartbeat(first, "a", lease_s=10)   # "a" lost it ...
        first.state = "done"
        assert not await store.finish(first, "a", b"late")          # ... and saves nothing
        again, _ = await store.claim("b", lease_s=10, wait_s=0)      # back at the head
        assert again.id == job.id and again.attempts == 2
        again.state = "done"
        assert await store.finish(again, "b", b"result")
        assert await store.result(job.id) == b"result"
        assert (await store.get(job.id)).state == "done"
    finally:
        await client.aclose()


async def test_a_job_is_cancelled_queued_or_running(make_settings):
    async with running(make_settings(models=["udnie"], job_lease_s=0.6)) as r:
        gate = hold(r.services, "udnie")
        first = (await r.client.post("/v1/jobs/stylize?style=udnie", content=images.png(),
                                     headers=PNG)).json()
        await until(gate.entered.is_set, what="the first job at the gate")
        second = (await r.client.post("/v1/jobs/stylize?style=udnie",
                                      content=images.png(seed=1), headers=PNG)).json()
        third = (await r.client.post("/v1/jobs/stylize?style=udnie",
                                     content=images.png(seed=2), headers=PNG)).json()
        queued = await r.client.delete(second["url"])
        assert queued.status_code == 200 and queued.json()["state"] == "cancelled"
        assert queued.json()["finished"] is not None
        running_one = await r.client.delete(first["url"])
        assert running_one.json()["state"] == "cancelled"
        gate.release.set()
        assert (await finished(r.client, third["url"]))["state"] == "done"   # the queue moved on
        for job in (first, second):
            status = (await r.client.get(job["url"])).json()
            assert status["state"] == "cancelled", job         # never done
            result = await r.client.get(job["url"] + "/result")
            assert result.status_code == 409 and "cancelled" in result.json()["error"]["message"]
        again = await r.client.delete(first["url"])
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_ended"
        assert (await r.client.delete("/v1/jobs/" + "A" * 22)).status_code == 404
        assert await r.metric("service_jobs_total", result="cancelled") == 2


async def test_redis_jobs_are_cancelled_out_of_the_queue_and_the_lease(redis_url, prefix):
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    store = RedisJobs(client, limit=4, ttl_s=60, prefix=prefix)
    try:
        running_job, queued_job = Job("E" * 22, "stylize", {}), Job("F" * 22, "stylize", {})
        await store.submit(running_job, b"1")
        await store.submit(queued_job, b"2")
        claimed, _ = await store.claim("a", lease_s=10, wait_s=0)
        assert claimed.id == running_job.id
        assert (await store.cancel(queued_job.id)).state == "cancelled"
        assert await client.llen(f"{prefix}jobs:queue") == 0
        assert (await store.cancel(running_job.id)).state == "cancelled"
        assert not await store.heartbeat(claimed, "a", lease_s=10)     # its replica stops
        assert not await store.finish(claimed, "a", b"late")
        assert (await store.get(running_job.id)).state == "cancelled"
        assert (await store.cancel(running_job.id)).state == "cancelled"   # unchanged
        assert await store.cancel("G" * 22) is None
    finally:
        await client.aclose()


async def test_a_replica_shutting_down_hands_its_job_back_at_once(make_settings, redis_url,
                                                                  prefix, tmp_path: Path):
    """No wait for the lease (30 s here): the job is queued again as the replica stops."""
    slow, fast = stub_costs(tmp_path)
    common = dict(models=["sr4"], device="stub", redis_url=redis_url, redis_key_prefix=prefix,
                  job_lease_s=30, tile_norm_stats="tile", max_batch_size=1, **TILED)
    async with running(make_settings(stub_cost=slow, **common)) as a:
        job = (await a.client.post("/v1/jobs/superres?factor=4", content=images.png(64, 64),
                                   headers=PNG)).json()

        async def started() -> bool:
            return (await a.client.get(job["url"])).json()["state"] == "running"

        await until(started, what="replica A running the job")
    stopped = time.monotonic()
    async with running(make_settings(stub_cost=fast, **common)) as b:
        status = await finished(b.client, job["url"])
        assert status["state"] == "done" and status["attempts"] == 2
        assert time.monotonic() - stopped < 25            # well before A's lease ran out


async def test_jobs_may_have_a_redis_of_their_own(make_settings, redis_url, prefix):
    settings = make_settings(models=["udnie"], jobs_redis_url=redis_url, redis_key_prefix=prefix)
    async with running(settings) as r:
        assert r.services.cache.backend == "memory"         # no SERVICE_REDIS_URL
        assert r.services.jobs.store.backend == "redis"
        job = (await r.client.post("/v1/jobs/stylize?style=udnie", content=images.png(),
                                   headers=PNG)).json()
        assert (await finished(r.client, job["url"]))["state"] == "done"
