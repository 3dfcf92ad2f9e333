"""Per-caller request rate limit: a token bucket per API key (per client address without keys).

Each caller has a bucket of `burst` tokens refilled at `rate` per second; a request takes one
token or gets 429 `rate_limited` with `Retry-After` (whole seconds until a token is back).
Probes, `/metrics` and the API description are never limited.

Without Redis the buckets live in this process (at most `MAX_LOCAL_BUCKETS`, least recently
used dropped first, so a flood of client addresses cannot grow memory). With Redis configured
they live in Redis, so that every replica draws from the same bucket: one Lua script reads,
refills and takes atomically, on Redis's clock (`TIME`), so replicas' clocks do not matter.
Keys are `<redis_key_prefix>ratelimit:<sha256 of the caller id>`, never client text. The Redis
client is the cache's (built once by `lifecycle.build_services`, which closes it).

Redis failing must not fail requests (nor let everyone through): on an error or a timeout the
request is decided by the in-process bucket instead, counted in
`service_ratelimit_backend_errors_total`; Redis is used again as soon as it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from service import errors
from service.auth import METRICS_PATH, is_open
from service.metrics import Metrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("service.ratelimit")
MAX_LOCAL_BUCKETS = 10_000
_ERROR_LOG_INTERVAL_S = 10.0


class Limiter(Protocol):
    async def take(self, caller: str) -> float:
        """0 if the request may go, else the seconds until it could."""
        ...

    async def close(self) -> None: ...


class LocalBuckets:
    """Token buckets in this process; `clock` is injectable so tests need no sleeps."""

    def __init__(self, rate: float, burst: int, *, max_buckets: int = MAX_LOCAL_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def __len__(self) -> int:
        return len(self._buckets)

    def take_now(self, caller: str) -> float:
        now = self.clock()
        tokens, then = self._buckets.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[caller] = (tokens, now)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait

    async def take(self, caller: str) -> float:
        return self.take_now(caller)

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV rate (tokens/s), burst. Returns {allowed (0|1), wait seconds as text}
# (Lua numbers would come back truncated to integers).
_TAKE = """
pcall(redis.replicate_commands)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class RedisBuckets:
    """Token buckets shared by every replica through Redis; falls back to `local` on errors."""

    def __init__(self, redis: Redis, rate: float, burst: int, *, prefix: str, timeout_s: float,
                 local: LocalBuckets, errors_total: Counter) -> None:
        # `redis` has no retries (`lifecycle.connect_redis`): a slow or absent Redis costs a
        # request at most one timeout.
        self.redis = redis
        self._take = self.redis.register_script(_TAKE)
        self.rate = rate
        self.burst = burst
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.local = local
        self._errors_total = errors_total
        self._last_error_log = -math.inf

    def key(self, caller: str) -> str:
        return f"{self.prefix}ratelimit:{hashlib.sha256(caller.encode()).hexdigest()}"

    async def take(self, caller: str) -> float:
        try:
            allowed, wait = await asyncio.wait_for(
                self._take(keys=[self.key(caller)], args=[repr(self.rate), self.burst]),
                self.timeout_s)
        except Exception as e:  # Redis down or slow: decide here rather than fail or open up
            self._errors_total.inc()
            now = time.monotonic()
            if now - self._last_error_log > _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.warning("rate limit in Redis failed, using this replica's buckets: %s: %s",
                            type(e).__name__, e)
            return self.local.take_now(caller)
        return 0.0 if int(allowed) else float(wait)

    async def close(self) -> None:
        await self.local.close()   # the Redis client is not this limiter's to close


def make_limiter(*, rate: float, burst: int, redis: Redis | None, prefix: str,
                 timeout_s: float, metrics: Metrics) -> Limiter | None:
    """None when rate <= 0 (no limit); Redis-backed when a Redis client is given."""
    if rate <= 0:
        return None
    burst = burst or max(1, math.ceil(rate))
    local = LocalBuckets(rate, burst)
    if redis is None:
        return local
    errors_total = Counter("service_ratelimit_backend_errors_total",
                           "Rate-limit decisions taken locally because Redis failed",
                           registry=metrics.registry)
    return RedisBuckets(redis, rate, burst, prefix=prefix, timeout_s=timeout_s, local=local,
                        errors_total=errors_total)


def caller_of(scope: Scope) -> str:
    """The API key's id set by ApiKeyAuth, else the client address."""
    caller = scope.get("state", {}).get("caller")
    if caller:
        return str(caller)
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


class RateLimit:
    """ASGI middleware (inside ApiKeyAuth): one token per request, 429 when none is left."""

    def __init__(self, app: ASGIApp, *, limiter: Limiter, metrics: Metrics) -> None:
        self.app = app
        self.limiter = limiter
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope["path"]) \
                and scope["path"] != METRICS_PATH:
            wait = await self.limiter.take(caller_of(scope))
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                error = errors.RateLimited(
                    f"over the request rate limit; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)})
                await errors.rejection(error, self.metrics)(scope, receive, send)
                return
        await self.app(scope, receive, send)
