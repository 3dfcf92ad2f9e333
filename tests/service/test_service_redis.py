"""The Redis cache against a real Redis server, including Redis dying mid-test."""

from __future__ import annotations

import time
import uuid

import redis

from tests.helpers import images
from tests.helpers.redis_server import redis_server
from tests.helpers.server import running

PNG = {"content-type": "image/png"}


async def test_redis_cache_hits_and_stores_only_hashed_keys(make_settings, redis_url) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    settings = make_settings(redis_url=redis_url, redis_key_prefix=prefix, cache_ttl_s=120)
    data = images.png(seed=101)
    client = redis.Redis.from_url(redis_url)
    try:
        async with running(settings) as r:
            first = await r.client.post("/v1/stylize?style=udnie", content=data, headers=PNG)
            second = await r.client.post("/v1/stylize?style=udnie", content=data, headers=PNG)
            assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
            assert first.content == second.content
            assert await r.metric("service_cache_hits_total", backend="redis") == 1
            assert await r.metric("service_cache_misses_total", backend="redis") == 1
            assert await r.metric("service_cache_errors_total", backend="redis") == 0
        keys = client.keys(prefix + "*")
        assert len(keys) == 1
        suffix = keys[0].decode().removeprefix(prefix)
        assert len(suffix) == 64 and all(c in "0123456789abcdef" for c in suffix)
        assert 0 < client.ttl(keys[0]) <= 120
    finally:
        for key in client.keys(prefix + "*"):
            client.delete(key)
        client.close()


async def test_values_over_the_cap_are_not_stored(make_settings, redis_url) -> None:
    settings = make_settings(redis_url=redis_url, redis_key_prefix=f"test-{uuid.uuid4().hex}:",
                             cache_max_value_bytes=10)
    data = images.png(seed=102)
    async with running(settings) as r:
        for _ in range(2):
            resp = await r.client.post("/v1/stylize?style=udnie", content=data, headers=PNG)
            assert resp.headers["x-cache"] == "miss"


async def test_requests_succeed_when_redis_stops(make_settings) -> None:
    with redis_server() as (url, proc):
        settings = make_settings(redis_url=url, redis_timeout_s=0.5)
        async with running(settings) as r:
            data = images.png(seed=103)
            ok = await r.client.post("/v1/stylize?style=udnie", content=data, headers=PNG)
            assert ok.status_code == 200
            hit = await r.client.post("/v1/stylize?style=udnie", content=data, headers=PNG)
            assert hit.headers["x-cache"] == "hit"

            proc.terminate()
            proc.wait(timeout=10)
            for seed in (103, 104):      # one cached before, one new: both computed
                started = time.monotonic()
                resp = await r.client.post("/v1/stylize?style=udnie",
                                           content=images.png(seed=seed), headers=PNG)
                assert resp.status_code == 200 and resp.headers["x-cache"] == "miss"
                assert time.monotonic() - started < 10
            assert await r.metric("service_cache_errors_total", backend="redis") >= 2
            assert await r.metric("service_request_duration_seconds_count", status="500") == 0
