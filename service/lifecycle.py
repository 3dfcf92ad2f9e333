"""How the parts start, become ready, drain and stop.

Phases: starting (models loading; /readyz 503) -> ready -> draining (SIGTERM: /readyz and new
requests 503, admitted requests finish) ; or failed (a model could not be loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service import errors
from service.batcher import Batcher
from service.cache import Cache, make_cache
from service.imaging import set_pixel_limit
from service.inference import Inference
from service.metrics import Metrics
from service.registry import Payload, Registry, is_oom
from service.settings import Settings

log = logging.getLogger("service.lifecycle")


class Phase(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    """Readiness and the count of admitted requests, which draining waits for."""

    def __init__(self, metrics: Metrics) -> None:
        self.phase = Phase.STARTING
        self.error: str | None = None
        self.inflight = 0
        self._metrics = metrics
        self._idle = asyncio.Event()
        self._idle.set()

    def check_accepting(self, max_inflight: int | None = None) -> None:
        if self.phase is Phase.DRAINING:
            raise errors.ShuttingDown("the server is shutting down; retry on another instance",
                                      headers={"Retry-After": "1"})
        if self.phase is Phase.STARTING:
            raise errors.NotReady("the models are still loading; retry shortly",
                                  headers={"Retry-After": "1"})
        if self.phase is Phase.FAILED:
            raise errors.NotReady(f"the service failed to start: {self.error}")
        if max_inflight is not None and self.inflight >= max_inflight:
            raise errors.QueueFull(f"{self.inflight} requests are in flight (limit "
                                   f"{max_inflight}); retry later", headers={"Retry-After": "1"})

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a request from admission until its response is built."""
        self.inflight += 1
        self._idle.clear()
        self._metrics.inflight.inc()
        try:
            yield
        finally:
            self.inflight -= 1
            self._metrics.inflight.dec()
            if self.inflight == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when every admitted request has been answered within `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class _BatchMetrics:
    """Feeds the batcher's hooks into Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def queue_depth(self, label: str, depth: int) -> None:
        self.m.queue_depth.labels(model=label).set(depth)

    def batch_done(self, label: str, queue_waits_s: list[float], compute_s: float) -> None:
        for wait in queue_waits_s:
            self.m.queue_wait.labels(model=label).observe(wait)
        self.m.batch_size.labels(model=label).observe(len(queue_waits_s))
        self.m.forward.labels(model=label).observe(compute_s)


def _model_of(key: tuple[str, int, int]) -> str:
    return key[0]


@dataclass(eq=False)
class Services:
    """Everything one app instance owns; built by `build_services`, run by start/stop."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle
    registry: Registry
    batcher: Batcher[tuple[str, int, int], Payload, np.ndarray]
    cache: Cache
    inference: Inference
    codec_pool: ThreadPoolExecutor
    _loader: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Start the batch worker and load the models in the background (/healthz answers)."""
        self.batcher.start()
        self._loader = asyncio.create_task(self._load(), name="load-models")

    async def wait_ready(self) -> Phase:
        if self._loader is not None:
            await asyncio.shield(self._loader)
        return self.lifecycle.phase

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            models = await asyncio.to_thread(self.registry.load_all)
        except Exception as e:  # a broken store must show, not serve half the models
            self.lifecycle.phase = Phase.FAILED
            self.lifecycle.error = f"{type(e).__name__}: {e}"
            log.error("loading the models failed: %s", self.lifecycle.error)
            return
        for m in models:
            factor = str(m.manifest.factor) if m.manifest.factor else ""
            self.metrics.model_info.labels(name=m.name, task=m.task, factor=factor,
                                           device=str(m.device), dtype=m.dtype_name,
                                           digest=m.digest).set(1)
            for choice in m.policy.sizes or [m.policy.default]:
                self.metrics.policy_max_batch.labels(
                    model=m.name, side=str(choice.side), path=choice.path,
                    source=m.policy.source).set(choice.max_batch)
        self.metrics.policy_lanes.set(self.registry.lanes)
        self.batcher.use_lanes(self.registry.lanes, self.registry.use_lanes)
        if self.registry.device.type == "cuda":
            self.metrics.watch_gpu_memory(self.registry.gpu_memory_bytes)
        if self.lifecycle.phase is Phase.STARTING:
            self.lifecycle.phase = Phase.READY
        log.info("ready: %d models on %s in %.2fs", len(models), self.registry.device,
                 time.monotonic() - started)

    async def drain(self) -> bool:
        """Refuse new requests, flush the queues, wait for admitted ones (drain_timeout_s)."""
        self.lifecycle.phase = Phase.DRAINING
        self.batcher.flush()
        log.info("draining: %d requests in flight", self.lifecycle.inflight)
        idle = await self.lifecycle.wait_idle(self.settings.drain_timeout_s)
        if not idle:
            log.warning("drain timeout: %d requests still in flight", self.lifecycle.inflight)
        return idle

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        await self.batcher.close(self.settings.drain_timeout_s)
        await self.cache.close()
        self.codec_pool.shutdown(wait=False, cancel_futures=True)


def build_services(settings: Settings) -> Services:
    """Wire the parts together; nothing connects or loads until `start`."""
    set_pixel_limit(settings.max_pixels)
    metrics = Metrics()
    registry = Registry(settings.model_store, settings.models, settings.device, settings.dtype,
                        policy=settings.batch_policy, policy_sizes=settings.policy_sizes,
                        policy_budget_s=settings.policy_budget_s,
                        max_batch_size=settings.max_batch_size,
                        max_batch_pixels=settings.max_batch_pixels, lanes=settings.lanes)

    def run_batch(key: tuple[str, int, int], items: list[Payload]) -> list[np.ndarray]:
        """One forward pass; the key holds no style, so a multi-style network's requests for
        different styles share it (each item brings its own row of style weights)."""
        model = registry.get(key[0])
        if model is None:
            raise LookupError(f"model {key[0]} is not loaded")
        conditions = [c for _, c in items]
        return model.run([p for p, _ in items],
                         conditions if any(c is not None for c in conditions) else None)

    batcher: Batcher[tuple[str, int, int], Payload, np.ndarray] = Batcher(
        run_batch, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
        queue_limit=settings.queue_limit, max_batch_cost=settings.max_batch_pixels,
        batch_limit=registry.max_batch, label=_model_of, is_oom=is_oom,
        observer=_BatchMetrics(metrics))
    cache = make_cache(redis_url=settings.redis_url, cache_bytes=settings.cache_bytes,
                       cache_ttl_s=settings.cache_ttl_s,
                       cache_max_value_bytes=settings.cache_max_value_bytes,
                       redis_timeout_s=settings.redis_timeout_s,
                       redis_key_prefix=settings.redis_key_prefix, metrics=metrics)
    codec_pool = ThreadPoolExecutor(max_workers=settings.codec_threads,
                                    thread_name_prefix="codec")
    inference = Inference(batcher=batcher, cache=cache, metrics=metrics, codec_pool=codec_pool,
                          max_pixels=settings.max_pixels,
                          max_output_pixels=settings.max_output_pixels,
                          threads=registry.threads)
    return Services(settings, metrics, Lifecycle(metrics), registry, batcher, cache, inference,
                    codec_pool)
