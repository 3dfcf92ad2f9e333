"""Jobs: work submitted now and fetched later, kept in a store every replica can reach.

A job's record, its input and its result live in a `JobStore`: in this process, or in Redis,
where all replicas share one queue. A replica claims the oldest queued job with a lease and
renews it while the job runs (`heartbeat`). A replica that dies stops renewing: any other one
puts the job back at the head of the queue once the lease has run out (`requeue_expired`). A
replica that lost its lease (paused too long) learns it at its next heartbeat or at `finish`,
which then refuse, so a job has one result. Records, inputs and results expire after a TTL.
The store knows nothing of images or models: a job's `spec` is the runner's business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

State = Literal["queued", "running", "done", "failed", "cancelled"]
ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"   # secrets.token_urlsafe(16): 128 random bits


def new_id() -> str:
    return secrets.token_urlsafe(16)


class JobQueueFull(Exception):
    """As many jobs are queued or running as the store allows."""


@dataclass
class Job:
    id: str
    kind: str                    # what the runner does: stylize | superres
    spec: dict[str, Any]         # how (model, options), for the runner
    caller: str | None = None    # the API key's id that submitted it (None: no keys)
    state: State = "queued"
    created: float = field(default_factory=time.time)   # Unix seconds
    started: float | None = None
    finished: float | None = None
    done: int = 0                # tiles computed ...
    total: int = 0               # ... out of this many (0: not known yet)
    attempts: int = 0            # claims so far: more than one after a replica died
    detail: dict[str, Any] = field(default_factory=dict)   # more progress: losses, time left
    error: dict[str, Any] | None = None   # {status, code, message} of a failed job
    content_type: str | None = None       # of the result

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        return cls(**json.loads(text))


class JobStore(Protocol):
    backend: str

    async def submit(self, job: Job, data: bytes) -> None:
        """Queue `job` with its input; JobQueueFull when `limit` jobs are queued or running."""
        ...

    async def claim(self, owner: str, lease_s: float, wait_s: float
                    ) -> tuple[Job, bytes] | None:
        """The oldest queued job, now running under `owner`'s lease, and its input; None when
        none came within `wait_s`."""
        ...

    async def heartbeat(self, job: Job, owner: str, lease_s: float) -> bool:
        """Save the record (progress) and renew the lease; False if `owner` no longer holds
        it."""
        ...

    async def finish(self, job: Job, owner: str, result: bytes | None) -> bool:
        """Save the final record (done with `result`, or failed) and drop the lease; False,
        and nothing saved, if `owner` no longer holds it."""
        ...

    async def release(self, job: Job, owner: str) -> None:
        """Put a job this owner runs back at the head of the queue (a replica shutting down)."""
        ...

    async def requeue_expired(self) -> list[str]:
        """Put the jobs whose lease ran out back at the head of the queue; their ids."""
        ...

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job: out of the queue, or its lease taken away (its
        replica stops it at its next heartbeat); the job as it now is, None if unknown."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def result(self, job_id: str) -> bytes | None: ...

    async def close(self) -> None: ...


class MemoryJobs:
    """One process's jobs. Finished jobs are dropped, oldest first, past `max_result_bytes` of
    results or `max_records` records, and every job `ttl_s` after it was last written."""

    backend = "memory"

    def __init__(self, *, limit: int, ttl_s: float, max_result_bytes: int,
                 max_records: int = 10_000) -> None:
        self.limit, self.ttl_s, self.max_result_bytes = limit, ttl_s, max_result_bytes
        self.max_records = max_records
        self._jobs: OrderedDict[str, tuple[Job, float]] = OrderedDict()   # job, expiry
        self._inputs: dict[str, bytes] = {}
        self._results: OrderedDict[str, bytes] = OrderedDict()
        self._queue: deque[str] = deque()
        self._leases: dict[str, tuple[str, float]] = {}   # id -> (owner, expiry)
        self._arrived = asyncio.Event()

    def _save(self, job: Job) -> None:
        """Keep a copy: the runner's changes count when it saves them, as with Redis."""
        job = dataclasses.replace(job)
        self._jobs[job.id] = (job, time.monotonic() + self.ttl_s)
        self._jobs.move_to_end(job.id)
        if len(self._jobs) > self.max_records:     # the least recently written that ended
            ended = [i for i, (j, _) in self._jobs.items()
                     if j.state not in ("queued", "running")]
            for job_id in ended[:len(self._jobs) - self.max_records]:
                self._drop(job_id)

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [i for i, (_, expiry) in self._jobs.items() if expiry <= now]:
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._inputs.pop(job_id, None)
        self._results.pop(job_id, None)
        self._leases.pop(job_id, None)
        if job_id in self._queue:
            self._queue.remove(job_id)

    async def submit(self, job: Job, data: bytes) -> None:
        self._expire()
        if len(self._queue) + len(self._leases) >= self.limit:
            raise JobQueueFull(f"{self.limit} jobs are queued or running")
        self._save(job)
        self._inputs[job.id] = data
        self._queue.append(job.id)
        self._arrived.set()

    async def claim(self, owner: str, lease_s: float, wait_s: float
                    ) -> tuple[Job, bytes] | None:
        if not self._queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except TimeoutError:
                return None
        self._expire()
        if not self._queue:
            return None
        job_id = self._queue.popleft()
        job = dataclasses.replace(self._jobs[job_id][0], state="running", started=time.time(),
                                  attempts=self._jobs[job_id][0].attempts + 1)
        self._leases[job_id] = (owner, time.monotonic() + lease_s)
        self._save(job)
        return job, self._inputs[job_id]

    def _holds(self, job: Job, owner: str) -> bool:
        lease = self._leases.get(job.id)
        return lease is not None and lease[0] == owner

    async def heartbeat(self, job: Job, owner: str, lease_s: float) -> bool:
        if not self._holds(job, owner):
            return False
        self._leases[job.id] = (owner, time.monotonic() + lease_s)
        self._save(job)
        return True

    async def finish(self, job: Job, owner: str, result: bytes | None) -> bool:
        if not self._holds(job, owner):
            return False
        del self._leases[job.id]
        self._inputs.pop(job.id, None)
        self._save(job)
        if result is not None:
            self._results[job.id] = result
            while sum(map(len, self._results.values())) > self.max_result_bytes \
                    and len(self._results) > 1:
                self._drop(next(iter(self._results)))
        return True

    async def release(self, job: Job, owner: str) -> None:
        if self._holds(job, owner):
            del self._leases[job.id]
            self._requeue(job.id)

    def _requeue(self, job_id: str) -> None:
        job = self._jobs[job_id][0]       # the store's own copy
        job.state, job.started = "queued", None
        self._queue.appendleft(job_id)
        self._arrived.set()

    async def requeue_expired(self) -> list[str]:
        now = time.monotonic()
        expired = [i for i, (_, expiry) in self._leases.items() if expiry <= now]
        for job_id in expired:
            del self._leases[job_id]
            self._requeue(job_id)
        return expired

    async def cancel(self, job_id: str) -> Job | None:
        job = await self.get(job_id)
        if job is None or job.state not in ("queued", "running"):
            return job
        job = self._jobs[job_id][0]
        if job_id in self._queue:
            self._queue.remove(job_id)
        self._leases.pop(job_id, None)
        self._inputs.pop(job_id, None)
        job.state, job.finished = "cancelled", time.time()
        self._save(job)
        return job

    async def get(self, job_id: str) -> Job | None:
        self._expire()
        entry = self._jobs.get(job_id)
        return dataclasses.replace(entry[0]) if entry else None

    async def result(self, job_id: str) -> bytes | None:
        return self._results.get(job_id)

    async def close(self) -> None:
        return None


# Redis: the record (JSON), input and result under job:<id>[:in|:out], each with the TTL; the
# queue is a list (pushed at the left, claimed from the right); leases a sorted set of expiry
# times, their owners a hash. The scripts make each step atomic across replicas.
_SUBMIT = """
if redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[5])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5])
redis.call('LPUSH', KEYS[1], ARGV[2])
return 1
"""
_CLAIM = """
local id = redis.call('RPOP', KEYS[1])
if not id then return false end
redis.call('ZADD', KEYS[2], ARGV[1], id)
redis.call('HSET', KEYS[3], id, ARGV[2])
return id
"""
_HEARTBEAT = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
return 1
"""
_FINISH = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[5])
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5]) end
redis.call('DEL', KEYS[5])
return 1
"""
# Back to the queue's claiming end, the record saying queued again: ARGV[1] is a job id, or ''
# for every lease expired at ARGV[2]; ARGV[3] (with an id) the owner that must hold it.
_REQUEUE = """
local ids
if ARGV[1] ~= '' then
  if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[3] then return {} end
  ids = {ARGV[1]}
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
end
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  local key = ARGV[4] .. id
  local text = redis.call('GET', key)
  if text then
    local job = cjson.decode(text)
    job['state'] = 'queued'
    job['started'] = cjson.null
    redis.call('SET', key, cjson.encode(job), 'KEEPTTL')
    redis.call('RPUSH', KEYS[1], id)
  end
end
return ids
"""

_CANCEL = """
local text = redis.call('GET', KEYS[4])
if not text then return false end
local job = cjson.decode(text)
if job['state'] == 'queued' or job['state'] == 'running' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[5])
  job['state'] = 'cancelled'
  job['finished'] = tonumber(ARGV[2])
  text = cjson.encode(job)
  redis.call('SET', KEYS[4], text, 'KEEPTTL')
end
return text
"""


class RedisJobs:
    """Jobs shared by every replica on one Redis. `redis` is a client whose timeout allows a
    result of up to the output limit to be written; whoever built it closes it."""

    backend = "redis"

    def __init__(self, redis: Redis, *, limit: int, ttl_s: float, prefix: str,
                 poll_s: float = 0.2) -> None:
        self.redis, self.limit, self.ttl_s, self.poll_s = redis, limit, ttl_s, poll_s
        self.prefix = prefix + "job:"
        self._queue, self._leases, self._owners = (prefix + "jobs:queue", prefix + "jobs:leases",
                                                   prefix + "jobs:owners")
        self._submit = redis.register_script(_SUBMIT)
        self._claim = redis.register_script(_CLAIM)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)
        self._cancel = redis.register_script(_CANCEL)

    def _key(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}{job_id}{part}"

    @property
    def _ttl(self) -> int:
        return max(1, round(self.ttl_s))

    async def submit(self, job: Job, data: bytes) -> None:
        accepted = await self._submit(
            keys=[self._queue, self._leases, self._key(job.id), self._key(job.id, ":in")],
            args=[self.limit, job.id, job.to_json(), data, self._ttl])
        if not accepted:
            raise JobQueueFull(f"{self.limit} jobs are queued or running")

    async def claim(self, owner: str, lease_s: float, wait_s: float
                    ) -> tuple[Job, bytes] | None:
        end = time.monotonic() + wait_s
        while True:
            job_id = await self._claim(keys=[self._queue, self._leases, self._owners],
                                       args=[time.time() + lease_s, owner])
            if job_id:
                job_id = job_id.decode()
                text, data = await self.redis.mget(self._key(job_id), self._key(job_id, ":in"))
                if text is None or data is None:     # expired while queued: forget it
                    await self.redis.zrem(self._leases, job_id)
                    await self.redis.execute_command("HDEL", self._owners, job_id)
                    continue
                job = Job.from_json(text)
                job.state, job.started, job.attempts = "running", time.time(), job.attempts + 1
                await self.heartbeat(job, owner, lease_s)
                return job, data
            if time.monotonic() >= end:
                return None
            await asyncio.sleep(min(self.poll_s, max(0.0, end - time.monotonic())))

    async def heartbeat(self, job: Job, owner: str, lease_s: float) -> bool:
        return bool(await self._heartbeat(
            keys=[self._leases, self._owners, self._key(job.id)],
            args=[job.id, owner, time.time() + lease_s, job.to_json(), self._ttl]))

    async def finish(self, job: Job, owner: str, result: bytes | None) -> bool:
        return bool(await self._finish(
            keys=[self._leases, self._owners, self._key(job.id), self._key(job.id, ":out"),
                  self._key(job.id, ":in")],
            args=[job.id, owner, job.to_json(), result if result is not None else "",
                  self._ttl]))

    async def release(self, job: Job, owner: str) -> None:
        await self._requeue(keys=[self._queue, self._leases, self._owners],
                            args=[job.id, 0, owner, self.prefix])

    async def requeue_expired(self) -> list[str]:
        ids = await self._requeue(keys=[self._queue, self._leases, self._owners],
                                  args=["", time.time(), "", self.prefix])
        return [i.decode() for i in ids]

    async def cancel(self, job_id: str) -> Job | None:
        text = await self._cancel(
            keys=[self._queue, self._leases, self._owners, self._key(job_id),
                  self._key(job_id, ":in")], args=[job_id, time.time()])
        return Job.from_json(text) if text else None

    async def get(self, job_id: str) -> Job | None:
        text = await self.redis.get(self._key(job_id))
        return Job.from_json(text) if text is not None else None

    async def result(self, job_id: str) -> bytes | None:
        return await self.redis.get(self._key(job_id, ":out"))

    async def close(self) -> None:
        return None
