"""Prometheus metrics, one CollectorRegistry per app so that several apps can coexist.

With several worker processes (service/workers.py) prometheus_client keeps every value in a
file per process under PROMETHEUS_MULTIPROC_DIR, and the exposition sums them: counters and
histograms add up; each gauge says how (`multiprocess_mode`: "livesum" adds the live
processes' values, "livemax" takes the largest).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """All metrics of one app instance; names are part of the project's contract."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.request_duration = Histogram(
            "service_request_duration_seconds", "Request latency, arrival to response",
            ["route", "model", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "service_queue_wait_seconds", "Time from enqueue to the start of its batch",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "service_batch_size", "Requests per forward pass", ["model"],
            buckets=BATCH_BUCKETS, registry=r)
        self.forward = Histogram(
            "service_forward_seconds", "Forward pass time per batch", ["model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.decode = Histogram(
            "service_decode_seconds", "Image decoding time", buckets=LATENCY_BUCKETS, registry=r)
        self.encode = Histogram(
            "service_encode_seconds", "Image encoding time", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "service_queue_depth", "Requests waiting for a batch", ["model"],
            multiprocess_mode="livesum", registry=r)
        self.inflight = Gauge(   # read from admission.Admission at scrape time
            "service_inflight_requests", "Requests admitted and not yet answered",
            multiprocess_mode="livesum", registry=r)
        self.rejections = Counter(
            "service_rejections_total", "Requests refused or abandoned, by reason", ["reason"],
            registry=r)
        self.cache_hits = Counter(
            "service_cache_hits_total", "Cache hits", ["backend"], registry=r)
        self.cache_misses = Counter(
            "service_cache_misses_total", "Cache misses", ["backend"], registry=r)
        self.cache_errors = Counter(
            "service_cache_errors_total", "Cache backend errors (the request went on)",
            ["backend"], registry=r)
        self.singleflight_shared = Counter(
            "service_singleflight_shared_total",
            "Requests answered by joining an identical computation already under way",
            registry=r)
        self.model_info = Gauge(
            "service_model_info", "Loaded models (value 1)",
            ["name", "task", "factor", "device", "dtype", "digest"], multiprocess_mode="livemax",
            registry=r)
        self.policy_max_batch = Gauge(
            "service_policy_max_batch", "Largest batch formed for inputs near side x side "
            "(side 0: any size), and the execution path, as the batch policy chose",
            ["model", "side", "path", "source"], multiprocess_mode="livemax",
            registry=r)
        self.policy_lanes = Gauge(
            "service_policy_lanes", "Forward passes that may run at once on the device, "
            "the CPU threads split between them", multiprocess_mode="livemax",
            registry=r)
        self.model_reloads = Counter(
            "service_model_reloads_total", "Model versions picked up while serving, by result "
            "(added, replaced, removed, refused: failed its check, the old version serves)",
            ["result"], registry=r)
        self.jobs = Counter(
            "service_jobs_total", "Jobs by kind and what happened: submitted, done, failed, "
            "cancelled, requeued (its replica stopped renewing the lease; kind not known then)",
            ["kind", "result"], registry=r)
        self.gpu_memory = Gauge(
            "service_gpu_memory_bytes", "GPU memory allocated by torch",
            multiprocess_mode="livesum", registry=r)
        self._watched: list[tuple[Gauge, Callable[[], float]]] = []

    @property
    def multiprocess(self) -> bool:
        return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def watch_gpu_memory(self, read_bytes: Callable[[], float]) -> None:
        """Read the GPU memory gauge at scrape time."""
        self._watch(self.gpu_memory, read_bytes)

    def watch_inflight(self, read_count: Callable[[], float]) -> None:
        """Read the in-flight gauge at scrape time (from its owner, the admission)."""
        self._watch(self.inflight, read_count)

    def _watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        if self.multiprocess:
            self._watched.append((gauge, read))
        else:
            gauge.set_function(read)

    def refresh(self) -> None:
        """Multiprocess mode reads files, not functions: write the watched gauges' values to
        this process's file (the lifecycle calls it every second, and each scrape)."""
        for gauge, read in self._watched:
            gauge.set(read())

    def exposition(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.refresh()
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker)
        return generate_latest(every_worker)


class BatchMetrics:
    """Feeds the batcher's hooks (`batcher.BatchObserver`) into Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def queue_depth(self, label: str, depth: int) -> None:
        self.m.queue_depth.labels(model=label).set(depth)

    def batch_done(self, label: str, queue_waits_s: Sequence[float], compute_s: float) -> None:
        for wait in queue_waits_s:
            self.m.queue_wait.labels(model=label).observe(wait)
        self.m.batch_size.labels(model=label).observe(len(queue_waits_s))
        self.m.forward.labels(model=label).observe(compute_s)
