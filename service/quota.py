"""A daily quota per caller (API key, or client address without keys): how many styles each
may have learned (POST /v1/styles), in process or shared by every replica in Redis.

Counted when a job is accepted: a style that fails or is cancelled still took its training
time. A caller over the quota gets 429 with Retry-After, the seconds until its day is over.
Redis keys are `<prefix>quota:<sha256 of the caller>`, never client text.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import TYPE_CHECKING

from service import errors

if TYPE_CHECKING:
    from redis.asyncio import Redis

DAY_S = 24 * 3600
# Count one more unless the day's count is already at the limit: (count after, seconds left).
_TAKE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


class Quota:
    def __init__(self, per_day: int, redis: Redis | None = None, prefix: str = "") -> None:
        self.per_day, self.redis, self.prefix = per_day, redis, prefix
        self._counts: dict[str, tuple[float, int]] = {}   # caller -> (day's end, count)
        self._take = redis.register_script(_TAKE) if redis is not None else None

    async def take(self, caller: str, what: str) -> None:
        """Count one for `caller`, or raise 429 when its day's quota is used up."""
        if self._take is not None:
            key = self.prefix + "quota:" + hashlib.sha256(caller.encode()).hexdigest()
            try:
                count, left = await self._take(keys=[key], args=[self.per_day, DAY_S])
            except Exception as e:
                raise errors.JobStoreUnavailable(f"the quota store is unavailable ({e}); "
                                                 "retry later", headers={"Retry-After": "1"}
                                                 ) from None
        else:
            now = time.time()
            end, count = self._counts.get(caller, (now + DAY_S, 0))
            if end <= now:
                end, count = now + DAY_S, 0
            count += 1
            if count <= self.per_day:
                self._counts[caller] = (end, count)
            left = end - now
        if count > self.per_day:
            retry = max(1, math.ceil(left))
            raise errors.QuotaExceeded(
                f"{what}: {self.per_day} a day per caller; this one's day ends in {retry} s",
                headers={"Retry-After": str(retry)})
