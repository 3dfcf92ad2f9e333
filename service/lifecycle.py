"""How the parts are built, start, become ready, drain and stop.

`build_services` constructs every part complete from the settings (nothing connects or loads
until `start`); `Services` runs them. The phases (starting -> ready -> draining, or failed)
and the in-flight count belong to `admission.Admission`; this module moves it between phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import os
import shlex
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service import errors, image_jobs, port_readiness, style_learning
from service.activations import CPU_PASS_TENSORS
from service.admission import Admission, Phase
from service.batcher import Batcher
from service.cache import Cache, make_cache
from service.inference import Inference
from service.job_runner import JobRunner
from service.jobs import JobStore, MemoryJobs, RedisJobs
from service.memory import MemoryBudget
from service.metrics import BatchMetrics, Metrics
from service.policy_store import PolicyStore
from service.quota import Quota
from service.ratelimit import Limiter, make_limiter
from service.registry import LoadedModel, Payload, Registry, is_device_error, is_oom, model_of
from service.settings import Settings
from service.style_learning import Learning
from service.tiling import TileConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("service.lifecycle")
T = TypeVar("T")


@dataclass(eq=False)
class Services:
    """Everything one app instance owns; built by `build_services`, run by start/stop."""

    settings: Settings
    metrics: Metrics
    admission: Admission
    registry: Registry
    batcher: Batcher[tuple[str, int, int], Payload, np.ndarray]
    cache: Cache
    limiter: Limiter | None       # per-caller rate limit; None: no limit
    inference: Inference
    codec_pool: ThreadPoolExecutor
    jobs: JobRunner               # image jobs
    learn: Learning
    learn_quota: Quota
    redis: Redis | None = None    # the one client (and pool) of the cache and the rate limit
    jobs_redis: Redis | None = None   # the jobs', with a timeout for moving whole images
    learning: JobRunner = field(init=False)   # styles learned from paintings, one at a time
    _loader: asyncio.Task[None] | None = field(default=None, repr=False)
    _refresher: asyncio.Task[None] | None = field(default=None, repr=False)
    _follower: asyncio.Task[None] | None = field(default=None, repr=False)
    _device_check: asyncio.Future[None] | None = field(default=None, repr=False)
    _device_checked_at: float = field(default=-math.inf, repr=False)

    async def start(self) -> None:
        """Start the batch worker and load the models in the background (/healthz answers)."""
        self.batcher.start()
        self._loader = asyncio.create_task(self._load(), name="load-models")
        if self.metrics.multiprocess:
            self._refresher = asyncio.create_task(self._refresh_metrics(), name="metrics")

    async def store_changed(self) -> None:
        """Tell every replica that the store changed (a style was learned into it): with
        Redis, a counter they follow (`_follow_store`); without, this process is the only one."""
        if self.jobs_redis is not None:
            with contextlib.suppress(Exception):
                await self.jobs_redis.incr(self._store_version_key)

    @property
    def _store_version_key(self) -> str:
        return self.settings.redis_key_prefix + "store:version"

    async def _follow_store(self, every_s: float = 2.0) -> None:
        """Reload when another replica says the store changed (replicas sharing one store, a
        volume: the files are there, the models in memory are not)."""
        assert self.jobs_redis is not None
        first, seen = True, None     # None: no replica has changed the store yet
        while True:
            try:
                version = await self.jobs_redis.get(self._store_version_key)
                if not first and version != seen:
                    report = await self.reload_models()
                    log.info("the store changed on another replica; reloaded: %s", report)
                first, seen = False, version
            except Exception as e:
                log.warning("following the store's version failed: %s: %s",
                            type(e).__name__, e)
            await asyncio.sleep(every_s)

    async def _refresh_metrics(self) -> None:
        """Several workers: this one's gauges, written where the others' scrapes read them."""
        while True:
            self.metrics.refresh()
            await asyncio.sleep(1.0)

    async def wait_ready(self) -> Phase:
        if self._loader is not None:
            await asyncio.shield(self._loader)
        return self.admission.phase

    def _publish(self, models: list[LoadedModel]) -> None:
        """The loaded models and their policies in the metrics (those of the previous versions
        cleared first)."""
        self.metrics.model_info.clear()
        self.metrics.policy_max_batch.clear()
        for m in models:
            factor = str(m.manifest.factor) if m.manifest.factor else ""
            self.metrics.model_info.labels(name=m.name, task=m.task, factor=factor,
                                           device=str(m.device), dtype=m.dtype_name,
                                           digest=m.digest).set(1)
            for choice in m.policy.sizes or [m.policy.default]:
                self.metrics.policy_max_batch.labels(
                    model=m.name, side=str(choice.side), path=choice.path,
                    source=m.policy.source).set(choice.max_batch)

    async def reload_models(self, nice: int = 19) -> dict[str, Any]:
        """The store's changes picked up while serving (`Registry.reload`), counted and shown
        in the metrics. Only once the first load is done. `nice`: the reload thread's CPU
        priority (19, the lowest: it waits for cycles the requests leave)."""
        if self.admission.phase != Phase.READY:
            raise errors.NotReady(f"the service is {self.admission.phase}; reload when ready",
                                  headers={"Retry-After": "1"})
        report = await in_thread(self.registry.reload, nice)
        for result in ("added", "replaced", "removed", "refused"):
            if report[result]:
                self.metrics.model_reloads.labels(result=result).inc(len(report[result]))
        self._publish(self.registry.models())
        return report

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            models = await asyncio.to_thread(self.registry.load_all)
        except Exception as e:  # a broken store must show, not serve half the models
            self.admission.mark_failed(f"{type(e).__name__}: {e}")
            log.error("loading the models failed: %s", self.admission.error)
            return
        self._publish(models)
        self.metrics.policy_lanes.set(self.registry.lanes)
        self.batcher.use_lanes(self.registry.lanes, self.registry.use_lanes,
                               split=self.registry.device.type == "cpu")
        if self.registry.device.type == "cuda":
            self.metrics.watch_gpu_memory(self.registry.gpu_memory_bytes)
        # Everything alive now (torch, the models, the app) lives as long as the process: out of
        # the collector's sight, the full collections that requests trigger stop walking
        # millions of objects (a fifth of the event loop's time per request, measured).
        gc.collect()
        gc.freeze()
        self.admission.mark_ready()
        port_readiness.mark_ready()
        self.jobs.start()
        self.learning.start()
        if self.jobs_redis is not None:
            self._follower = asyncio.create_task(self._follow_store(), name="job-store-follower")
        log.info("ready: %d models on %s in %.2fs", len(models), self.registry.device,
                 time.monotonic() - started)

    async def check_device(self) -> None:
        """While ready, a tiny forward pass on the device (at most every `device_check_s`;
        concurrent callers share one). After a sticky device error (a CUDA fault fails every
        later call) it fails too: the service is marked failed, and `python -m service` exits
        so that Kubernetes restarts the container. Out of memory is a busy device: ignored."""
        if self.admission.phase is not Phase.READY:
            return
        now = time.monotonic()
        due = now - self._device_checked_at >= self.settings.device_check_s
        if self._device_check is None or (self._device_check.done() and due):
            self._device_checked_at = now
            self._device_check = asyncio.ensure_future(
                asyncio.to_thread(self.registry.health_check))
        try:
            await asyncio.shield(self._device_check)
        except Exception as e:
            if is_oom(e) or self.admission.phase is not Phase.READY:
                return
            self.admission.mark_failed(f"the device failed a health forward: "
                                       f"{type(e).__name__}: {e}")
            log.error("%s", self.admission.error)

    async def drain(self) -> bool:
        """Refuse new requests, flush the queues, wait for admitted ones (drain_timeout_s)."""
        self.admission.start_draining()
        self.batcher.flush()
        log.info("draining: %d requests in flight", self.admission.inflight)
        idle = await self.admission.wait_idle(self.settings.drain_timeout_s)
        if not idle:
            log.warning("drain timeout: %d requests still in flight", self.admission.inflight)
        return idle

    async def stop(self) -> None:
        for task in (self._loader, self._refresher, self._follower):
            if task is not None and not task.done():
                task.cancel()
        await self.jobs.stop()
        await self.learning.stop()
        await self.batcher.close(self.settings.drain_timeout_s)
        await self.cache.close()
        if self.limiter is not None:
            await self.limiter.close()
        for client in (self.redis, self.jobs_redis):
            if client is not None:
                try:
                    await client.aclose()
                except Exception as e:
                    log.warning("closing a redis client failed: %s", e)
        self.inference.close()
        self.codec_pool.shutdown(wait=False, cancel_futures=True)


async def in_thread(fn: Callable[[], T], nice: int) -> T:
    """`fn()` on a thread of its own at CPU priority `nice` (on Linux a thread's nice value is
    its own): at 19 a reload's loading, measuring and checking yield the cores to the requests
    being served."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        try:
            outcome = functools.partial(done.set_result, fn())
        except BaseException as e:  # delivered to the awaiting caller
            outcome = functools.partial(done.set_exception, e)
        loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="reload", daemon=True).start()
    return await done


def connect_redis(url: str, timeout_s: float) -> Redis:
    """A Redis client (and its connection pool) that connects on first use. No retries: a slow
    or absent Redis must cost a request at most one timeout."""
    from redis.asyncio import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                          retry=Retry(NoBackoff(), 0))


def make_registry(settings: Settings) -> Registry:
    """The models on the device the settings name (the stub device: service/stub.py)."""
    if settings.device == "stub":
        from service.stub import StubRegistry

        assert settings.stub_cost is not None   # the settings' validator checks it
        return StubRegistry(settings.model_store, settings.models, settings.stub_cost,
                            max_batch_size=settings.max_batch_size,
                            max_activation_bytes=settings.max_activation_bytes)
    return Registry(settings.model_store, settings.models, settings.device, settings.dtype,
                    policy=settings.batch_policy, policy_sizes=settings.policy_sizes,
                    policy_budget_s=settings.policy_budget_s,
                    max_batch_size=settings.max_batch_size,
                    max_batch_pixels=settings.max_batch_pixels, lanes=settings.lanes,
                    max_activation_bytes=settings.max_activation_bytes,
                    host_activation_bytes=(  # a batch's pass within half the budget
                        int(settings.memory_budget_bytes / 2 / CPU_PASS_TENSORS)
                        if settings.memory_budget_bytes else None),
                    policy_store=PolicyStore(settings.policy_file or None),
                    remeasure=settings.remeasure)


def build_services(settings: Settings) -> Services:
    """Build every part from the settings; nothing connects or loads until `start`."""
    metrics = Metrics()
    registry = make_registry(settings)
    batcher: Batcher[tuple[str, int, int], Payload, np.ndarray] = Batcher(
        registry.run_batch, max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms, wait_when_idle=settings.max_wait_ms > 0,
        queue_limit=settings.queue_limit,
        max_batch_cost=settings.max_batch_pixels, batch_limit=registry.max_batch,
        label=model_of, is_device_error=is_device_error, observer=BatchMetrics(metrics))
    admission = Admission(queue_limit=settings.queue_limit,
                          max_batch_size=settings.max_batch_size,
                          max_inflight=settings.max_inflight,
                          request_timeout_s=settings.request_timeout_s,
                          queue=batcher)
    metrics.watch_inflight(lambda: admission.inflight)
    redis = (connect_redis(settings.redis_url, settings.redis_timeout_s)
             if settings.redis_url else None)
    cache = make_cache(redis=redis, cache_bytes=settings.cache_bytes,
                       cache_ttl_s=settings.cache_ttl_s,
                       cache_max_value_bytes=settings.cache_max_value_bytes,
                       redis_timeout_s=settings.redis_timeout_s,
                       redis_key_prefix=settings.redis_key_prefix, metrics=metrics)
    limiter = make_limiter(rate=settings.rate_limit_per_s, burst=settings.rate_limit_burst,
                           redis=redis, prefix=settings.redis_key_prefix,
                           timeout_s=settings.redis_timeout_s, metrics=metrics)
    codec_pool = ThreadPoolExecutor(max_workers=settings.codec_thread_count(),
                                    thread_name_prefix="codec")
    tiling = TileConfig(   # big images run in tiles (service/tiling.py)
        threshold_pixels=settings.tile_threshold_pixels, size=settings.tile_size,
        overlap=settings.tile_overlap, superres_size=settings.superres_tile_size,
        superres_overlap=settings.superres_tile_overlap, norm_stats=settings.tile_norm_stats,
        batch_size=settings.max_batch_size, batch_pixels=settings.max_batch_pixels)
    inference = Inference(batcher=batcher, cache=cache, metrics=metrics, codec_pool=codec_pool,
                          max_pixels=settings.max_pixels,
                          max_output_pixels=settings.max_output_pixels,
                          max_decoded_bytes=settings.max_decoded_bytes, tiling=tiling,
                          threads=registry.threads, time_limit_s=settings.request_timeout_s,
                          memory=MemoryBudget(settings.memory_budget_bytes))
    jobs_url = settings.jobs_redis_url or settings.redis_url
    jobs_redis = connect_redis(jobs_url, settings.job_redis_timeout_s) if jobs_url else None

    def job_store(limit: int, prefix: str) -> JobStore:
        if jobs_redis is not None:
            return RedisJobs(jobs_redis, limit=limit, ttl_s=settings.job_ttl_s, prefix=prefix)
        return MemoryJobs(limit=limit, ttl_s=settings.job_ttl_s,
                          max_result_bytes=settings.job_results_bytes)

    jobs = JobRunner(job_store(settings.job_queue_limit, settings.redis_key_prefix),
                     image_jobs.handler(inference, registry, timeout_s=settings.job_timeout_s),
                     metrics, workers=settings.job_workers, lease_s=settings.job_lease_s)
    learn = Learning(settings.model_store, settings.learn_base_model, settings.learn_photos_dir,
                     settings.learn_iterations, settings.learn_time_limit_s,
                     settings.learn_crop_size, settings.learn_threads,
                     tuple(shlex.split(settings.learn_extra_args)))
    services = Services(settings, metrics, admission, registry, batcher, cache, limiter,
                        inference, codec_pool, jobs, learn,
                        Quota(settings.learn_quota_per_day, jobs_redis, settings.redis_key_prefix),
                        redis, jobs_redis)
    services.learning = JobRunner(
        job_store(settings.learn_queue_limit, settings.redis_key_prefix + "learn:"),
        # the reload that installs a learned style runs at the trainer's priority (normal):
        # the job's user waits for it, and the trainer's share of the cores is free by then
        style_learning.handler(learn, functools.partial(services.reload_models, nice=0),
                               services.store_changed),
        metrics, workers=1,
        lease_s=settings.job_lease_s, max_attempts=1)
    return services
