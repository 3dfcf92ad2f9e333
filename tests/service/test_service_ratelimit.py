"""The per-caller rate limit: token-bucket arithmetic on a fake clock, the 429 it answers, and
the Redis-backed buckets that replicas share (against a real Redis, including one that dies).

Rates are tiny (one token per 1000 s), so no token comes back during a test: nothing depends
on how fast the machine is."""

from __future__ import annotations

import re
import uuid

import redis

from service.ratelimit import LocalBuckets
from tests.helpers.redis_server import redis_server
from tests.helpers.server import running

SLOW = 0.001   # tokens per second


def test_bucket_arithmetic_on_a_fake_clock() -> None:
    now = [100.0]
    buckets = LocalBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take_now("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take_now("a") == 0.5          # one token takes 1/rate seconds to come back
    assert buckets.take_now("b") == 0.0          # every caller has its own bucket
    now[0] += 0.25
    assert buckets.take_now("a") == 0.25         # half a token back, half still missing
    now[0] += 10
    assert [buckets.take_now("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]   # capped at burst


def test_local_buckets_are_bounded_in_number() -> None:
    buckets = LocalBuckets(rate=1.0, burst=1, max_buckets=100)
    for i in range(1000):
        buckets.take_now(f"addr:10.0.{i // 256}.{i % 256}")
    assert len(buckets) == 100


async def test_over_the_limit_is_429_with_retry_after_per_key(make_settings) -> None:
    settings = make_settings(models=["udnie"], api_keys="key-one-123456,key-two-654321",
                             rate_limit_per_s=SLOW, rate_limit_burst=3)
    one = {"x-api-key": "key-one-123456"}
    two = {"authorization": "Bearer key-two-654321"}
    async with running(settings) as r:
        assert [(await r.client.get("/v1/models", headers=one)).status_code
                for _ in range(3)] == [200] * 3
        over = await r.client.get("/v1/models", headers=one)
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "rate_limited"
        assert int(over.headers["retry-after"]) == 1000
        assert (await r.client.get("/v1/models", headers=two)).status_code == 200
        # Refused before the body is read or admission is counted; probes are not limited.
        post = await r.client.post("/v1/stylize?style=udnie", content=b"x" * 1000,
                                   headers={**one, "content-type": "image/png"})
        assert post.status_code == 429
        for _ in range(5):
            assert (await r.client.get("/healthz")).status_code == 200
            assert (await r.client.get("/metrics")).status_code == 200
        assert await r.metric("service_rejections_total", reason="rate_limited") == 2
        assert await r.metric("service_inflight_requests") == 0


async def test_without_keys_the_limit_is_per_client_address(make_settings) -> None:
    async with running(make_settings(models=["udnie"], rate_limit_per_s=SLOW,
                                     rate_limit_burst=2)) as r:
        statuses = [(await r.client.get("/v1/models")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]


async def test_replicas_share_buckets_in_redis(make_settings, redis_url) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    settings = make_settings(models=["udnie"], api_keys="shared-key-000111", redis_url=redis_url,
                             redis_key_prefix=prefix, rate_limit_per_s=SLOW,
                             rate_limit_burst=4)
    key = {"x-api-key": "shared-key-000111"}
    client = redis.Redis.from_url(redis_url)
    try:
        async with running(settings) as a, running(settings) as b:
            statuses = []
            for replica in (a, b, a, b, a, b):
                statuses.append((await replica.client.get("/v1/models", headers=key))
                                .status_code)
            assert statuses == [200, 200, 200, 200, 429, 429]
            assert await a.metric("service_ratelimit_backend_errors_total") == 0
        names = [k.decode() for k in client.keys(prefix + "ratelimit:*")]
        assert len(names) == 1                     # the key's hash, never the key itself
        assert re.fullmatch(re.escape(prefix) + r"ratelimit:[0-9a-f]{64}", names[0])
        assert 0 < client.pttl(names[0]) <= 4 / SLOW * 1000 + 1000
    finally:
        for name in client.keys(prefix + "*"):
            client.delete(name)
        client.close()


async def test_redis_dying_falls_back_to_local_buckets(make_settings) -> None:
    with redis_server() as (url, proc):
        settings = make_settings(models=["udnie"], redis_url=url, redis_timeout_s=0.5,
                                 rate_limit_per_s=SLOW, rate_limit_burst=2)
        async with running(settings) as r:
            assert (await r.client.get("/v1/models")).status_code == 200   # via Redis
            proc.kill()
            proc.wait(timeout=10)
            # Decided in-process now: a fresh local bucket of 2, then 429; never a 5xx.
            statuses = [(await r.client.get("/v1/models")).status_code for _ in range(3)]
            assert statuses == [200, 200, 429]
            assert await r.metric("service_ratelimit_backend_errors_total") == 3
            assert await r.metric("service_request_duration_seconds_count", status="500") == 0
