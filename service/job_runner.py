"""Jobs on this replica: queues submitted work in the job store (service/jobs.py), claims
queued jobs, runs each through a handler, and keeps their progress and results.

Why jobs: a synchronous request must be answered within `request_timeout_s`, so work predicted
to take longer gets 413 there. As a job it has its own time, and the client polls for progress
and the result instead of holding a connection open. The runner knows nothing of what a job
does: its handler does (service/image_jobs.py transforms an image; service/style_learning.py
learns a style).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service import errors
from service.jobs import Job, JobQueueFull, JobStore, new_id
from service.metrics import Metrics
from service.tiling import Progress

log = logging.getLogger("service.jobs")


@dataclass(frozen=True)
class JobOutput:
    body: bytes
    content_type: str


# Runs a claimed job on its input, counting its progress; raises errors.ServiceError to fail it.
Handler = Callable[[Job, bytes, Progress], Awaitable[JobOutput]]


class JobRunner:
    """`workers` jobs at a time on this replica, each under a lease of `lease_s` renewed every
    third of it; a job claimed more than `max_attempts` times (its replicas kept dying) fails."""

    def __init__(self, store: JobStore, handle: Handler, metrics: Metrics, *, workers: int,
                 lease_s: float, max_attempts: int = 3) -> None:
        self.store, self.handle, self.metrics = store, handle, metrics
        self.workers, self.lease_s, self.max_attempts = workers, lease_s, max_attempts
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[str, Job] = {}

    # -- the routes' side ------------------------------------------------------------------

    async def submit(self, job: Job, data: bytes) -> Job:
        """Queue `job` with its input (checked by the caller)."""
        try:
            await self.store.submit(job, data)
        except JobQueueFull as e:
            raise errors.JobQueueFull(f"the job queue is full ({e}); retry later",
                                      headers={"Retry-After": str(max(1, round(self.lease_s)))}
                                      ) from None
        except Exception as e:
            raise _unavailable("submit", e) from None
        self.metrics.jobs.labels(kind=job.kind, result="submitted").inc()
        return job

    async def get(self, job_id: str, caller: str | None) -> Job:
        """The job, if it exists and `caller` submitted it (else 404, as if it did not)."""
        try:
            job = await self.store.get(job_id)
        except Exception as e:
            raise _unavailable("get", e) from None
        if job is None or job.caller != caller:
            raise errors.UnknownJob(f"no job {job_id} (unknown, or expired)")
        return job

    async def cancel(self, job_id: str, caller: str | None) -> Job:
        """Cancel the caller's job if it is queued or running (409 once it has ended)."""
        job = await self.get(job_id, caller)
        if job.state not in ("queued", "running"):
            raise errors.JobEnded(f"the job has ended ({job.state}); nothing to cancel")
        try:
            cancelled = await self.store.cancel(job_id)
        except Exception as e:
            raise _unavailable("cancel", e) from None
        if cancelled is None:
            raise errors.UnknownJob(f"no job {job_id} (unknown, or expired)")
        self.metrics.jobs.labels(kind=job.kind, result="cancelled").inc()
        return cancelled

    async def result(self, job_id: str, caller: str | None) -> JobOutput:
        job = await self.get(job_id, caller)
        if job.state == "cancelled":
            raise errors.JobFailed("the job was cancelled")
        if job.state == "failed":
            assert job.error is not None
            raise errors.JobFailed(f"the job failed: {job.error['code']}: "
                                   f"{job.error['message']}")
        if job.state != "done":
            raise errors.JobNotDone(f"the job is {job.state} ({job.done} of {job.total or '?'} "
                                    "tiles done); poll its status", headers={"Retry-After": "1"})
        try:
            body = await self.store.result(job_id)
        except Exception as e:
            raise _unavailable("result", e) from None
        if body is None:
            raise errors.UnknownJob(f"the result of job {job_id} has expired")
        assert job.content_type is not None
        return JobOutput(body, job.content_type)

    # -- the workers' side -----------------------------------------------------------------

    def start(self) -> None:
        """Claim and run jobs, and requeue those of dead replicas, until `stop`."""
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{i}")
                       for i in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._reap(), name="job-reaper"))

    async def stop(self) -> None:
        """Stop claiming; the jobs running here go back to the queue for another replica."""
        running = list(self._running.values())    # cancelling the workers forgets them
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for job in running:
            with contextlib.suppress(Exception):
                await self.store.release(job, self.owner)

    async def _work(self) -> None:
        while True:
            try:
                claimed = await self.store.claim(self.owner, self.lease_s, wait_s=1.0)
            except Exception as e:
                log.warning("claiming a job failed: %s: %s", type(e).__name__, e)
                await asyncio.sleep(1.0)
                continue
            if claimed is not None:
                await self._run(*claimed)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 2)
            try:
                requeued = await self.store.requeue_expired()
            except Exception as e:
                log.warning("requeueing expired jobs failed: %s: %s", type(e).__name__, e)
                continue
            for job_id in requeued:
                log.warning("job %s: its replica stopped renewing the lease; queued again",
                            job_id)
                self.metrics.jobs.labels(kind="", result="requeued").inc()

    async def _run(self, job: Job, data: bytes) -> None:
        """Run `job`, saving its progress and renewing its lease until it ends."""
        self._running[job.id] = job
        progress = Progress(total=0)
        task = asyncio.ensure_future(self._compute(job, data, progress))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.lease_s / 3)
                job.done, job.total, job.detail = progress.done, progress.total, progress.detail
                if not task.done() and not await self._heartbeat(job):
                    task.cancel()
                    log.warning("job %s: lost its lease (cancelled, or run by another "
                                "replica); stopped here", job.id)
                    return
            body: bytes | None = None
            try:
                outcome = task.result()
                body, job.content_type, job.state = outcome.body, outcome.content_type, "done"
            except errors.ServiceError as e:
                job.state, job.error = "failed", {"status": e.status, "code": e.code,
                                                  "message": e.message}
            except Exception as e:
                log.exception("job %s failed", job.id)
                job.state, job.error = "failed", {"status": 500, "code": "compute_failed",
                                                  "message": f"{type(e).__name__}: {e}"}
            job.finished = time.time()
            try:
                saved = await self.store.finish(job, self.owner, body)
            except Exception as e:
                log.warning("job %s: saving its end failed: %s: %s", job.id, type(e).__name__, e)
                saved = False   # the lease runs out; another replica runs it again
            if saved:
                self.metrics.jobs.labels(kind=job.kind, result=job.state).inc()
        finally:
            if not task.done():
                task.cancel()
            self._running.pop(job.id, None)

    async def _heartbeat(self, job: Job) -> bool:
        """Renew the lease; a store that does not answer counts as renewed (the lease decides)."""
        try:
            return await self.store.heartbeat(job, self.owner, self.lease_s)
        except Exception as e:
            log.warning("job %s: heartbeat failed: %s: %s", job.id, type(e).__name__, e)
            return True

    async def _compute(self, job: Job, data: bytes, progress: Progress) -> JobOutput:
        if job.attempts > self.max_attempts:
            raise errors.ComputeFailed(f"the job was started {job.attempts - 1} times and its "
                                       "replica stopped each time")
        return await self.handle(job, data, progress)


def _unavailable(op: str, e: Exception) -> errors.JobStoreUnavailable:
    log.warning("job store %s failed: %s: %s", op, type(e).__name__, e)
    return errors.JobStoreUnavailable("the job store is unavailable; retry later",
                                      headers={"Retry-After": "1"})
