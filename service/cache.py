"""The result cache: encoded outputs keyed by a hash of input, model and output parameters.

In-process LRU bounded in bytes by default; Redis when a URL is configured (the client is built
once, by `lifecycle.build_services`, and shared with the rate limit). The cache can never fail a
request: a backend error or timeout is logged, counted, and treated as a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from service.metrics import Metrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("service.cache")


def cache_key(input_sha256: str, model_digest: str, params: dict[str, Any]) -> str:
    """A hex sha256 over everything that determines the output bytes (never raw client text)."""
    blob = json.dumps({"input": input_sha256, "model": model_digest, "params": params},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class Cache(Protocol):
    backend: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def close(self) -> None: ...


class NoCache:
    backend = "none"

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryCache:
    """LRU over encoded outputs, bounded by the total size of the values."""

    backend = "memory"

    def __init__(self, max_bytes: int, max_value_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self.max_value_bytes = min(max_value_bytes, max_bytes)
        self.size_bytes = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._metrics = metrics

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is None:
            self._metrics.cache_misses.labels(backend=self.backend).inc()
            return None
        self._items.move_to_end(key)
        self._metrics.cache_hits.labels(backend=self.backend).inc()
        return value

    async def set(self, key: str, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size_bytes -= len(old)
        self._items[key] = value
        self.size_bytes += len(value)
        while self.size_bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.size_bytes -= len(evicted)

    async def close(self) -> None:
        self._items.clear()
        self.size_bytes = 0


class RedisCache:
    """Shared cache in Redis with a TTL; every call is bounded by `timeout_s` and never raises.
    `redis` is a client built without retries (`lifecycle.connect_redis`); whoever built it
    closes it."""

    backend = "redis"

    def __init__(self, redis: Redis, *, ttl_s: int, max_value_bytes: int, timeout_s: float,
                 prefix: str, metrics: Metrics) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_value_bytes = max_value_bytes
        self.timeout_s = timeout_s
        self.prefix = prefix
        self._metrics = metrics

    async def get(self, key: str) -> bytes | None:
        try:
            value = await asyncio.wait_for(self.redis.get(self.prefix + key), self.timeout_s)
        except Exception as e:  # any backend failure is a miss, never a failed request
            self._error("get", e)
            return None
        counter = self._metrics.cache_hits if value is not None else self._metrics.cache_misses
        counter.labels(backend=self.backend).inc()
        return value

    async def set(self, key: str, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            return
        try:
            await asyncio.wait_for(self.redis.set(self.prefix + key, value, ex=self.ttl_s),
                                   self.timeout_s)
        except Exception as e:
            self._error("set", e)

    async def close(self) -> None:
        return None   # the client is not this cache's to close

    def _error(self, op: str, e: Exception) -> None:
        self._metrics.cache_errors.labels(backend=self.backend).inc()
        log.warning("redis cache %s failed, computing as usual: %s: %s", op,
                    type(e).__name__, e)


def make_cache(*, redis: Redis | None, cache_bytes: int, cache_ttl_s: int,
               cache_max_value_bytes: int, redis_timeout_s: float, redis_key_prefix: str,
               metrics: Metrics) -> Cache:
    """Redis when a client is given, else the in-process LRU (or nothing when its size is 0)."""
    if redis is not None:
        return RedisCache(redis, ttl_s=cache_ttl_s, max_value_bytes=cache_max_value_bytes,
                          timeout_s=redis_timeout_s, prefix=redis_key_prefix, metrics=metrics)
    if cache_bytes > 0:
        return MemoryCache(cache_bytes, cache_max_value_bytes, metrics)
    return NoCache()
