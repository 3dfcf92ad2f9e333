"""`python -m bench reliability`: does the service keep working when attacked and overloaded?

Runs `python -m service` as a child process on 127.0.0.1 (so that its RSS is its own, read from
/proc) and plays, in order:

  corpus        bench/hostile.py's bad and odd requests: status and error code expected and
                got, and the server's peak RSS for each (VmHWM, reset before every case)
  schemathesis  generated requests from the service's own OpenAPI schema: no 5xx, every
                response conforms
  overload      capacity measured closed-loop, then 10x that open-loop: admitted requests'
                latency, 429s with Retry-After and how fast they come, RSS, then normal service
  faults        Redis killed and restarted under load; a model whose forward raises (served
                in-process, with the shipped network behind a fault-injecting wrapper);
                clients disconnecting in bulk; SIGTERM under load
  soak          mixed load for --soak-s seconds: RSS growth after warm-up, errors

Every load goes to 127.0.0.1 only, is bounded in count and time, and stops by itself. Writes
bench/results/reliability[-quick].json and .md. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import hostile
from bench.machine import describe
from bench.server import Launched, free_port, launch, redis_on

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MiB = 1024 * 1024
STYLE, SR_MODEL, FACTOR = "udnie", "sr_x4", 4

# The limits the server runs with for every section (the rest are the service's defaults).
LIMITS = hostile.Limits(max_body_bytes=8 * MiB, max_pixels=2 * MiB, max_url_bytes=8192,
                        max_header_bytes=16384, body_timeout_s=2.0, header_timeout_s=2.0)


def limit_env(limits: hostile.Limits) -> dict[str, str]:
    return {"SERVICE_MAX_BODY_BYTES": str(limits.max_body_bytes),
            "SERVICE_MAX_PIXELS": str(limits.max_pixels),
            "SERVICE_MAX_OUTPUT_PIXELS": str(16 * limits.max_pixels),
            "SERVICE_MAX_URL_BYTES": str(limits.max_url_bytes),
            "SERVICE_MAX_HEADER_BYTES": str(limits.max_header_bytes),
            "SERVICE_BODY_TIMEOUT_S": str(limits.body_timeout_s),
            "SERVICE_HEADER_TIMEOUT_S": str(limits.header_timeout_s)}


# -- the service as a child process -------------------------------------------------------------

class Service:
    """A launched service (bench.server.launch) and what this benchmark reads of it: its memory
    from /proc, /metrics, its log."""

    def __init__(self, launched: Launched) -> None:
        self.launched = launched
        self.port, self.proc, self.log_path = launched.port, launched.proc, launched.log_path

    async def ready(self, timeout_s: float = 300) -> None:
        """Wait for /readyz in a thread: the event loop stays free meanwhile."""
        await asyncio.to_thread(self.launched.wait_ready, timeout_s)

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak since start or the last reset), bytes."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value, _ = line.split()
                    out[name.rstrip(":")] = int(value) * 1024
        return out

    def rss(self) -> int:
        return self.status()["VmRSS"]

    def reset_peak(self) -> None:
        """Set VmHWM back to the current RSS (Linux 4.0+: write 5 to clear_refs)."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    async def metrics(self) -> dict[str, float]:
        """Samples of /metrics, keyed by 'name{labels}' as exposed."""
        _, _, body = await get(self.port, "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    async def idle(self, timeout_s: float = 120) -> float:
        """Wait for queue depth 0 and nothing in flight; seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            m = await self.metrics()
            depth = sum(v for k, v in m.items() if k.startswith("service_queue_depth"))
            if depth == 0 and m.get("service_inflight_requests", 0) == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise TimeoutError("the service did not become idle")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            with suppress(ValueError):
                lines.append(json.loads(line))
        return lines


@contextmanager
def service(env: dict[str, str], log_dir: Path, name: str) -> Iterator[Service]:
    """`python -m service` on the CPU with the shipped models, one torch thread, LIMITS and
    `env`, its log in `log_dir`/`name`.log; stopped at the end."""
    settings = {"SERVICE_DEVICE": "cpu", "SERVICE_MODELS": f"{STYLE},{SR_MODEL}",
                "SERVICE_LOG_LEVEL": "info", "SERVICE_TORCH_THREADS": "1",
                **limit_env(LIMITS), **env}
    with launch(settings, log_dir / f"{name}.log") as launched:
        yield Service(launched)


class RssSampler:
    """Samples a service's RSS every `interval_s` in the background."""

    def __init__(self, svc: Service, interval_s: float = 0.25) -> None:
        self.svc, self.interval_s = svc, interval_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    async def _run(self) -> None:
        while True:
            with suppress(OSError):
                self.samples.append((time.monotonic() - self._t0, self.svc.rss()))
            await asyncio.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def peak(self) -> int:
        return max(v for _, v in self.samples)


# -- a small keep-alive HTTP client (httpx costs more CPU per request than the server) -----------

@dataclass
class Reply:
    status: int | None
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


class Client:
    """HTTP/1.1 to 127.0.0.1:port over a pool of kept-alive connections."""

    IDLE_S = 2.0   # below uvicorn's keep-alive timeout (5 s): never reuse a closing connection

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < self.IDLE_S:
                return reader, writer
            writer.close()
        return None

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: dict[str, str] | None = None, timeout_s: float = 60) -> Reply:
        started = time.monotonic()
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        step = "connect"
        try:
            conn = self._take()
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port),
                                              timeout_s)
            reader, writer = conn
            step = "send"
            writer.write(head.encode() + body)
            await writer.drain()
            step = "response"
            status, resp_headers, data = await asyncio.wait_for(hostile._response(reader),
                                                                timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
            if conn is not None:
                conn[1].close()
            return Reply(None, time.monotonic() - started, error=f"{step}: {type(e).__name__}")
        if resp_headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return Reply(status, time.monotonic() - started, resp_headers, data)

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        return await asyncio.wait_for(hostile._response(reader), 30)
    finally:
        writer.close()


# -- inputs ---------------------------------------------------------------------------------------

class Inputs:
    """Small PNGs; `unique()` makes every request's bytes (and so its cache key) new by adding a
    text chunk, without re-encoding pixels."""

    def __init__(self, side: int = 64, pool: int = 64, seed: int = 0) -> None:
        self.pool = [hostile.png(side, side, seed=seed + i) for i in range(pool)]
        self._n = 0

    def unique(self) -> bytes:
        self._n += 1
        base = self.pool[self._n % len(self.pool)]
        text = hostile.chunk(b"tEXt", b"n\x00" + str(self._n).encode())
        return base[:33] + text + base[33:]

    def repeated(self, k: int) -> bytes:
        return self.pool[k % len(self.pool)]


PNG = {"Content-Type": "image/png"}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def mib(n: float) -> float:
    return round(n / MiB, 1)


def labels(key: str) -> dict[str, str]:
    """The labels of a sample key 'name{a="1",b="2"}'."""
    return dict(re.findall(r'(\w+)="([^"]*)"', key.partition("{")[2]))


def forward_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Forward passes between two scrapes: count, mean batch size, mean seconds."""
    def delta(prefix: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))

    n = delta("service_forward_seconds_count")
    return {"batches": int(n),
            "mean_batch": round(delta("service_batch_size_sum") / n, 2) if n else None,
            "mean_forward_ms": ms(delta("service_forward_seconds_sum") / n) if n else None}


def server_quantile(before: dict[str, float], after: dict[str, float], q: float,
                    **match: str) -> float | None:
    """The q-quantile of service_request_duration_seconds between two scrapes, as the upper
    bound of its histogram bucket (the server's own view, without the client's scheduling)."""
    counts: defaultdict[float, float] = defaultdict(float)
    for key, value in after.items():
        if key.startswith("service_request_duration_seconds_bucket{"):
            found = labels(key)
            if all(found.get(k) == v for k, v in match.items()):
                counts[float(found["le"])] += value - before.get(key, 0.0)
    if not counts or counts[math.inf] == 0:
        return None
    total = counts[math.inf]
    return next(le for le in sorted(counts) if counts[le] >= q * total)


async def closed_loop(clients: int, duration_s: float,
                      make: Callable[[int], Awaitable[Reply]]) -> list[Reply]:
    """`clients` loops each sending one request after the other for `duration_s`."""
    end = time.monotonic() + duration_s
    replies: list[Reply] = []
    counter = iter(range(10**9))

    async def loop() -> None:
        while time.monotonic() < end:
            replies.append(await make(next(counter)))

    await asyncio.gather(*(loop() for _ in range(clients)))
    return replies


# -- corpus ---------------------------------------------------------------------------------------

# Legitimate requests for the largest work the limits allow: run last, so that the hostile
# cases' peaks are measured from the lower baseline.
LARGEST = ("1x100000", "at-the-pixel-limit")


async def run_corpus(log_dir: Path, quick: bool) -> dict[str, Any]:
    cases = hostile.corpus(LIMITS, style=STYLE, factor=FACTOR)
    if quick:
        cases = [c for c in cases if c.name not in LARGEST]
    cases.sort(key=lambda c: c.name in LARGEST)
    rows: list[dict[str, Any]] = []
    with service({}, log_dir, "corpus") as svc:
        await svc.ready()
        client = Client(svc.port)
        await client.request("POST", f"/v1/stylize?style={STYLE}", hostile.png(64, 64), PNG)
        client.close()
        idle = svc.rss()
        for case in cases:
            svc.reset_peak()
            before = svc.rss()
            outcome = await hostile.send("127.0.0.1", svc.port, case, timeout_s=120)
            after = svc.status()
            rows.append({
                "name": case.name, "group": case.group, "why": case.why,
                "expected": [case.status, case.code], "got": [outcome.status, outcome.code],
                "ok": outcome.matches(case), "seconds": round(outcome.seconds, 3),
                "error": outcome.error, "rss_before_mib": mib(before),
                "peak_rss_mib": mib(after["VmHWM"]), "body_bytes": len(case.body)})
            print(f"  {'ok ' if rows[-1]['ok'] else 'BAD'} {case.name:30s} expected "
                  f"{case.status} got {outcome.status} {outcome.code or ''} "
                  f"{outcome.seconds:6.2f}s peak {rows[-1]['peak_rss_mib']} MiB", flush=True)
        m = await svc.metrics()
    refused = [r for r in rows if r["expected"][0] != 200]
    legit = [r for r in rows if r["expected"][0] == 200]
    largest = [r for r in rows if r["name"] in LARGEST]
    five_xx = sum(v for k, v in m.items()   # /readyz is 503 while loading: not a failure
                  if k.startswith("service_request_duration_seconds_count")
                  and 'status="5' in k and 'route="/readyz"' not in k)
    hangs = [r["name"] for r in rows if r["got"][0] is None]
    bound = max((r["peak_rss_mib"] for r in largest), default=None)
    return {
        "cases": len(rows), "as_expected": sum(r["ok"] for r in rows),
        "not_as_expected": [r["name"] for r in rows if not r["ok"]],
        "server_5xx": int(five_xx), "no_answer": hangs,
        "slowest_s": max(r["seconds"] for r in rows),
        "idle_rss_mib": mib(idle),
        "peak_rss_refused_max_mib": max(r["peak_rss_mib"] for r in refused),
        "peak_rss_refused_max_case": max(refused, key=lambda r: r["peak_rss_mib"])["name"],
        "peak_rss_legit_small_max_mib": max((r["peak_rss_mib"] for r in legit
                                             if r["name"] not in LARGEST), default=None),
        "peak_rss_largest_allowed_mib": bound,
        "rss_bounded": bound is None or all(r["peak_rss_mib"] <= bound * 1.05 for r in rows),
        "rows": rows,
    }


# -- schemathesis --------------------------------------------------------------------------------

def run_schemathesis_sync(port: int, examples: int) -> dict[str, Any]:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    def fuzz(strategy: st.SearchStrategy[schemathesis.Case]) -> tuple[Counter[int], str | None]:
        """Statuses of `examples` generated calls, and the first failure (or None)."""
        statuses: Counter[int] = Counter()

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(timeout=60)
            statuses[response.status_code] += 1

        try:
            check()
        except Exception as e:  # a schemathesis failure group: record it, go on
            return statuses, str(e)[:2000]
        return statuses, None

    hostile.register_image_strategies()
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    # Random names are 404s: known ones (twice as often) take requests on to the model.
    known: dict[str, list[dict[str, Any]]] = {"/v1/stylize": [{"style": STYLE}] * 2,
                                              "/v1/superres": [{"factor": FACTOR}] * 2}
    operations = [("POST", "/v1/stylize"), ("POST", "/v1/superres"), ("GET", "/v1/models"),
                  ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
    results: list[dict[str, Any]] = []
    for method, path in operations:
        for mode in GenerationMode:
            if mode is GenerationMode.NEGATIVE and path not in known:
                continue
            operation = schema[path][method]
            strategy = st.one_of(*(operation.as_strategy(mode, query=q)
                                   for q in known.get(path, [])), operation.as_strategy(mode))
            statuses, failure = fuzz(strategy)
            results.append({"operation": f"{method} {path}", "mode": str(mode),
                            "requests": sum(statuses.values()),
                            "statuses": dict(sorted(statuses.items())), "failure": failure})
            print(f"  {method} {path} {mode}: {dict(sorted(statuses.items()))}"
                  f"{'  FAILED' if failure else ''}", flush=True)
    return {"examples_per_operation": examples, "operations": results,
            "requests": sum(r["requests"] for r in results),
            "server_5xx": sum(n for r in results for s, n in r["statuses"].items() if s >= 500),
            "failures": sum(r["failure"] is not None for r in results)}


async def run_schemathesis(log_dir: Path, quick: bool) -> dict[str, Any]:
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        return {"skipped": "schemathesis is not installed (pip install -e '.[test]')"}
    with service({}, log_dir, "schemathesis") as svc:
        await svc.ready()
        return await asyncio.to_thread(run_schemathesis_sync, svc.port, 15 if quick else 60)


# -- overload --------------------------------------------------------------------------------------

async def run_overload(log_dir: Path, quick: bool, overload_s: float) -> dict[str, Any]:
    inputs = Inputs(64)
    target = f"/v1/stylize?style={STYLE}"
    with service({}, log_dir, "overload") as svc:
        await svc.ready()
        client = Client(svc.port)

        async def one(_: int) -> Reply:
            return await client.request("POST", target, inputs.unique(), PNG)

        sequential = [await one(i) for i in range(20)]
        alone_p50 = pct([r.seconds for r in sequential], 50)
        measure_s = 5 if quick else 20
        clients = 16
        at_start = await svc.metrics()
        replies = await closed_loop(clients, measure_s, one)
        at_capacity = forward_stats(at_start, await svc.metrics())
        ok = [r for r in replies if r.status == 200]
        capacity = len(ok) / measure_s
        closed_p99 = pct([r.seconds for r in ok], 99)
        print(f"  capacity {capacity:.1f} req/s ({clients} clients, {measure_s} s), p50 alone "
              f"{ms(alone_p50)} ms", flush=True)

        await svc.idle()
        before_metrics = await svc.metrics()
        rate = 10 * capacity
        rss_before = svc.rss()
        rng = random.Random(0)
        tasks: list[asyncio.Task[Reply]] = []
        sent_at: list[float] = []
        with RssSampler(svc) as sampler:
            started = time.monotonic()
            next_at = started
            while next_at < started + overload_s:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                sent_at.append(time.monotonic() - started)
                tasks.append(asyncio.create_task(one(0)))
                next_at += rng.expovariate(rate)
            send_s = time.monotonic() - started
            results = await asyncio.gather(*tasks)
            drain_s = await svc.idle()
        after_metrics = await svc.metrics()
        server_p99 = server_quantile(before_metrics, after_metrics, 0.99, route="/v1/stylize",
                                     status="200")
        # the client's view of a 429 includes its own backlog of 10x the capacity in sends
        shed_server_p99 = server_quantile(before_metrics, after_metrics, 0.99, status="429")
        compute = forward_stats(before_metrics, after_metrics)
        client.close()
        statuses = Counter(r.status or r.error for r in results)
        timeline = []
        for second in range(math.ceil(overload_s)):
            here = [r for t, r in zip(sent_at, results, strict=True) if second <= t < second + 1]
            ok_s = [r.seconds for r in here if r.status == 200]
            shed_s = [r.seconds for r in here if r.status == 429]
            timeline.append([second, len(here), len(ok_s), ms(pct(ok_s, 99)), len(shed_s),
                             ms(pct(shed_s, 50)), ms(pct(shed_s, 99))])
        admitted = [r.seconds for r in results if r.status == 200]
        shed = [r for r in results if r.status == 429]
        after_client = Client(svc.port)
        after = [await after_client.request("POST", target, inputs.unique(), PNG)
                 for _ in range(20)]
        after_client.close()
        m = await svc.metrics()
        reasons = {k.split('"')[1]: int(v) for k, v in m.items()
                   if k.startswith("service_rejections_total{")}
        from service.settings import Settings

        settings = {name: Settings.model_fields[name].default
                    for name in ("queue_limit", "max_inflight", "max_batch_size")}
        bound_s = (settings["queue_limit"] + settings["max_batch_size"]) / capacity
    return {
        "image": "64x64 PNG, unique bytes per request (no cache hits)",
        "model": f"{STYLE} (shipped), CPU",
        "latency_alone_p50_ms": ms(alone_p50),
        "capacity_rps": round(capacity, 1), "capacity_clients": clients,
        "capacity_closed_loop_p99_ms": ms(closed_p99),
        "forward_at_capacity": at_capacity,
        "offered_rps": round(rate, 1), "duration_s": overload_s,
        "sent": len(results), "achieved_send_rps": round(len(results) / send_s, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "ok": len(admitted),
        "ok_rps": round(len(admitted) / overload_s, 1),
        "admitted_p50_ms": ms(pct(admitted, 50)), "admitted_p99_ms": ms(pct(admitted, 99)),
        "admitted_max_ms": ms(max(admitted, default=None)),
        "admitted_p99_bound_ms": ms(bound_s),
        "admitted_wait_at_overload_throughput_ms": ms(
            (settings["queue_limit"] + settings["max_batch_size"]) / max(len(admitted), 1)
            * overload_s),
        "admitted_p99_server_le_ms": ms(server_p99),
        "forward_during_overload": compute,
        "shed_429": len(shed),
        "shed_with_retry_after": sum("retry-after" in r.headers for r in shed),
        "shed_p50_ms": ms(pct([r.seconds for r in shed], 50)),
        "shed_p99_ms": ms(pct([r.seconds for r in shed], 99)),
        "shed_p99_server_le_ms": ms(shed_server_p99),
        "rejections_by_reason": reasons,
        "other": len(results) - len(admitted) - len(shed),
        "rss_before_mib": mib(rss_before), "rss_peak_mib": mib(sampler.peak),
        "queue_drained_s": round(drain_s, 2),
        "after": {"statuses": dict(Counter(r.status for r in after)),
                  "p50_ms": ms(pct([r.seconds for r in after], 50))},
        "settings": settings,
        "timeline": {"columns": ["second", "sent", "ok", "ok_p99_ms", "shed", "shed_p50_ms",
                                 "shed_p99_ms"], "rows": timeline},
    }


# -- faults ----------------------------------------------------------------------------------------

async def fault_redis(log_dir: Path, quick: bool) -> dict[str, Any]:
    """Redis SIGKILLed at 1/4 of the run and started again at 1/2, under closed-loop load."""
    duration = 12.0 if quick else 40.0
    port = free_port()
    inputs = Inputs(64, pool=16)
    target = f"/v1/stylize?style={STYLE}"
    timeline: list[tuple[float, int | None, str]] = []
    events: dict[str, float] = {}
    with redis_on(port) as first, service(
            {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "SERVICE_REDIS_TIMEOUT_S": "0.25"},
            log_dir, "fault-redis") as svc:
        await svc.ready()
        client = Client(svc.port)
        t0 = time.monotonic()

        async def one(i: int) -> Reply:
            body = inputs.repeated(i) if i % 2 else inputs.unique()
            reply = await client.request("POST", target, body, PNG)
            timeline.append((time.monotonic() - t0, reply.status, reply.headers.get("x-cache",
                                                                                    "")))
            return reply

        async def chaos() -> None:
            await asyncio.sleep(duration / 4)
            first.kill()
            first.wait()
            events["killed_s"] = time.monotonic() - t0
            await asyncio.sleep(duration / 4)
            with redis_on(port) as second:
                events["restarted_s"] = time.monotonic() - t0
                await asyncio.sleep(duration / 2 + 5)
                second.kill()

        chaos_task = asyncio.create_task(chaos())
        replies = await closed_loop(8, duration, one)
        client.close()
        m = await svc.metrics()
        chaos_task.cancel()
        with suppress(asyncio.CancelledError):
            await chaos_task
    restarted = events.get("restarted_s", math.inf)
    killed = events.get("killed_s", math.inf)
    first_hit = min((t for t, s, c in timeline if t > restarted and c == "hit" and s == 200),
                    default=None)
    per_phase = {}
    for phase, lo, hi in (("before", 0, killed), ("redis down", killed, restarted),
                          ("after restart", restarted, math.inf)):
        rows = [(s, c) for t, s, c in timeline if lo <= t < hi]
        per_phase[phase] = {"requests": len(rows), "ok": sum(s == 200 for s, _ in rows),
                            "hits": sum(c == "hit" for _, c in rows)}
    return {
        "duration_s": duration, "requests": len(replies),
        "failed": sum(r.status != 200 for r in replies),
        "statuses": dict(Counter(r.status for r in replies)),
        "killed_at_s": round(killed, 2), "restarted_at_s": round(restarted, 2),
        "first_hit_after_restart_s": None if first_hit is None
        else round(first_hit - restarted, 2),
        "cache_errors": int(m.get('service_cache_errors_total{backend="redis"}', 0)),
        "phases": per_phase,
    }


def _id_image(n: int, poisoned: bool, side: int = 32) -> bytes:
    """A PNG that carries its request number in pixel (0, 0) and a poison mark in (0, 1)."""
    px = hostile.pixels(side, side, seed=n).copy()
    px[0, 0] = [(n >> 16) & 255, (n >> 8) & 255, n & 255]
    px[0, 1] = [255, 0, 255] if poisoned else [0, 255, 0]
    return hostile.encode(hostile.Image.fromarray(px), "PNG")


async def fault_raising_model(quick: bool) -> dict[str, Any]:
    """The shipped style network behind a wrapper whose forward raises for any batch that
    holds a poisoned image. Served in-process (the wrapper cannot cross a process boundary)."""
    import torch
    import uvicorn
    from torch import nn

    from service.app import create_app
    from service.middleware import bounded_http_protocol
    from service.settings import Settings

    class RaisesOnPoison(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.batches: list[tuple[list[int], bool]] = []
            self.lock = threading.Lock()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            marks = (x[:, :, 0, :2].float() * 255).round().to(torch.int64)  # (N, 3, 2)
            ids = (marks[:, 0, 0] * 65536 + marks[:, 1, 0] * 256 + marks[:, 2, 0]).tolist()
            poisoned = bool(((marks[:, :, 1] == torch.tensor([255, 0, 255])).all(1)).any())
            with self.lock:
                self.batches.append((ids, poisoned))
            if poisoned:
                raise RuntimeError("injected fault")
            return self.inner(x)

    # policy fixed: the module itself runs every batch (no rewritten execution path around it)
    settings = Settings(device="cpu", models=[STYLE], redis_url=None, max_batch_size=8,
                        max_wait_ms=20, batch_policy="fixed", torch_threads=1)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning",
                                           http=bounded_http_protocol(  # type: ignore[arg-type]
                                               max_head_bytes=65536, head_timeout_s=10)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while True:
            with suppress(OSError, ValueError, asyncio.IncompleteReadError):
                if (await get(port, "/readyz"))[0] == 200:
                    break
            await asyncio.sleep(0.2)
        model = app.state.services.registry.get(STYLE)
        wrapper = RaisesOnPoison(model.module)
        model.module = wrapper
        client = Client(port)
        total = 120 if quick else 480
        poisoned = {n for n in range(1, total + 1) if n % 40 == 3}
        status_of: dict[int, int | None] = {}
        numbers = iter(range(1, total + 1))

        async def worker() -> None:
            for n in numbers:
                reply = await client.request("POST", f"/v1/stylize?style={STYLE}",
                                             _id_image(n, n in poisoned), PNG)
                status_of[n] = reply.status

        await asyncio.gather(*(worker() for _ in range(16)))
        after = await client.request("POST", f"/v1/stylize?style={STYLE}",
                                     _id_image(total + 1, False), PNG)
        client.close()
    finally:
        server.should_exit = True
        thread.join(30)
    in_failed = {i for ids, bad in wrapper.batches if bad for i in ids}
    failed = {n for n, s in status_of.items() if s == 500}
    return {
        "model": f"{STYLE} (shipped) behind a wrapper raising on poisoned batches",
        "requests": total, "poisoned": len(poisoned),
        "batches": len(wrapper.batches), "failed_batches": sum(b for _, b in wrapper.batches),
        "requests_in_failed_batches": len(in_failed),
        "answered_500": len(failed),
        "500s_exactly_the_failed_batches": failed == in_failed,
        "others_200": all(s == 200 for n, s in status_of.items() if n not in in_failed),
        "statuses": dict(Counter(status_of.values())),
        "after_status": after.status,
    }


async def fault_disconnects(log_dir: Path, quick: bool) -> dict[str, Any]:
    """Hundreds of clients leave mid-upload or while queued, beside clients that stay."""
    n = 100 if quick else 300
    rng = random.Random(1)
    big = [hostile.png(256, 256, seed=i) for i in range(8)]
    with service({}, log_dir, "fault-disconnects") as svc:
        await svc.ready()
        rss_before = svc.rss()
        target = f"/v1/stylize?style={STYLE}"

        answered_first = 0

        async def leaver(i: int) -> None:
            """Sends all or half of a request, leaves after 0.05-2 s unless answered first."""
            nonlocal answered_first
            body = big[i % len(big)] + hostile.chunk(b"tEXt", b"n\x00" + str(i).encode())
            sent = body[: len(body) // 2] if i % 2 else body
            with suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
                writer.write(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + sent)
                await writer.drain()
                with suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), rng.uniform(0.05, 2.0)):
                        answered_first += 1
                writer.transport.abort()

        stayer_client = Client(svc.port)
        inputs = Inputs(64)

        retries = 0

        async def stayers() -> list[Reply]:
            """20 requests from a client that stays, and retries after a 429's Retry-After."""
            nonlocal retries
            replies = []
            for _ in range(20):
                for _attempt in range(30):
                    reply = await stayer_client.request("POST", target, inputs.unique(), PNG)
                    if reply.status != 429:
                        break
                    retries += 1
                    await asyncio.sleep(float(reply.headers.get("retry-after", "1")))
                replies.append(reply)
            return replies

        with RssSampler(svc) as sampler:
            leaving = asyncio.gather(*(leaver(i) for i in range(n)))   # alongside the stayer
            stayed = await stayers()
            await leaving
            drained_s = await svc.idle()
        stayer_client.close()
        m = await svc.metrics()
        after = await Client(svc.port).request("POST", target, inputs.unique(), PNG)
        rss_after = svc.rss()
    return {
        "clients_leaving": n, "mid_upload": n // 2, "after_upload": n - n // 2,
        "answered_before_leaving": answered_first,
        "disconnects_counted": int(m.get('service_rejections_total{reason="client_disconnected"}',
                                         0)),
        "queue_depth_after": sum(v for k, v in m.items() if k.startswith("service_queue_depth")),
        "inflight_after": m.get("service_inflight_requests"),
        "seconds_to_idle": round(drained_s, 2),
        "staying_clients_ok": sum(r.status == 200 for r in stayed), "staying_clients": len(stayed),
        "staying_retries_after_429": retries,
        "forward_passes": int(sum(v for k, v in m.items()
                                  if k.startswith("service_batch_size_count"))),
        "after_status": after.status,
        "rss_before_mib": mib(rss_before), "rss_peak_mib": mib(sampler.peak),
        "rss_after_mib": mib(rss_after),
    }


async def fault_sigterm(log_dir: Path, quick: bool) -> dict[str, Any]:
    """SIGTERM after a few seconds of closed-loop load; clients stop at their first refusal."""
    inputs = Inputs(64)
    with service({"SERVICE_DRAIN_TIMEOUT_S": "30"}, log_dir, "fault-sigterm") as svc:
        await svc.ready()
        target = f"/v1/stylize?style={STYLE}"
        replies: list[Reply] = []
        signalled = asyncio.Event()

        async def loop() -> None:
            client = Client(svc.port)
            while True:
                reply = await client.request("POST", target, inputs.unique(), PNG)
                replies.append(reply)
                if signalled.is_set() and reply.status != 200:
                    break                      # 503 or no connection: go elsewhere
            client.close()

        loops = [asyncio.create_task(loop()) for _ in range(16)]
        await asyncio.sleep(2 if quick else 5)
        sent_before = len(replies)
        svc.proc.send_signal(signal.SIGTERM)
        signalled.set()
        await asyncio.wait_for(asyncio.gather(*loops), 120)
        code = await asyncio.to_thread(svc.proc.wait, 120)
        log = svc.log_lines()
    logged = Counter(e.get("status") for e in log if e.get("logger") == "service.access"
                     and e.get("path", "").startswith("/v1/"))
    client_side = Counter(r.status if r.status is not None else r.error for r in replies)
    return {
        "exit_code": code, "requests_before_signal": sent_before,
        "client_outcomes": {str(k): v for k, v in client_side.items()},
        "server_logged": {str(k): v for k, v in logged.items()},
        "admitted_and_completed": logged.get(200, 0),
        "every_admitted_completed": logged.get(200, 0) == client_side.get(200, 0)
        and set(logged) <= {200, 503},
        "drain_logged": any("draining" in str(e.get("message")) for e in log),
    }


async def run_faults(log_dir: Path, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, run in (("redis", lambda: fault_redis(log_dir, quick)),
                      ("raising_model", lambda: fault_raising_model(quick)),
                      ("disconnects", lambda: fault_disconnects(log_dir, quick)),
                      ("sigterm", lambda: fault_sigterm(log_dir, quick))):
        print(f"  fault: {name}", flush=True)
        out[name] = await guarded(run)
        print(f"    {json.dumps(out[name])[:400]}", flush=True)
    return out


async def guarded(run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """A section's result, or the error that stopped it (the other sections still run)."""
    try:
        return await run()
    except Exception:
        return {"error": traceback.format_exc(limit=8)}


# -- soak ------------------------------------------------------------------------------------------

async def run_soak(log_dir: Path, soak_s: float) -> dict[str, Any]:
    """Mixed load from 4 closed-loop clients: new and repeated stylisations, super-resolution,
    bad inputs, the model list. The LRU is 4 MiB so that it is full within the warm-up."""
    inputs, small = Inputs(64, pool=50), Inputs(32, pool=20, seed=1000)
    bad = [(c.headers, c.body, c.status) for c in hostile.corpus(LIMITS, style=STYLE,
                                                                 factor=FACTOR)
           if c.group == "file" and c.status in (400, 415) and len(c.body) < 100_000]
    warmup_s = max(60.0, soak_s / 10) if soak_s >= 300 else soak_s / 5
    window_s = min(30.0, soak_s / 5)     # RSS is the median over a window, not one sample
    mix: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    with service({"SERVICE_CACHE_BYTES": str(4 * MiB)}, log_dir, "soak") as svc:
        await svc.ready()
        client = Client(svc.port)
        rng = random.Random(2)

        async def one(i: int) -> Reply:
            roll = rng.random()
            if roll < 0.55:
                kind, expected = "stylize-new", 200
                reply = await client.request("POST", f"/v1/stylize?style={STYLE}",
                                             inputs.unique(), PNG)
            elif roll < 0.75:
                kind, expected = "stylize-repeat", 200
                reply = await client.request("POST", f"/v1/stylize?style={STYLE}&format=jpeg",
                                             inputs.repeated(i), PNG)
            elif roll < 0.85:
                kind, expected = "superres-x4", 200
                reply = await client.request("POST", f"/v1/superres?factor={FACTOR}",
                                             small.unique(), PNG)
            elif roll < 0.95:
                headers, body, expected = bad[i % len(bad)]
                kind = "bad-input"
                reply = await client.request("POST", f"/v1/stylize?style={STYLE}", body,
                                             dict(headers))
            else:
                kind, expected = "models", 200
                reply = await client.request("GET", "/v1/models")
            mix[kind] += 1
            if reply.status != expected:
                unexpected[f"{kind}: {reply.status} {reply.error or ''}".strip()] += 1
            return reply

        with RssSampler(svc, interval_s=1.0) as sampler:
            replies = await closed_loop(4, soak_s, one)
        client.close()
    samples = sampler.samples

    def median_rss(lo: float, hi: float) -> float:
        return statistics.median(v for t, v in samples if lo <= t < hi)

    base = median_rss(warmup_s, warmup_s + window_s)
    end = median_rss(soak_s - window_s, soak_s + 1)
    growth = (end - base) / base
    return {
        "duration_s": soak_s, "warmup_s": warmup_s, "clients": 4,
        "requests": len(replies), "rps": round(len(replies) / soak_s, 1),
        "mix": dict(mix), "unexpected": dict(unexpected),
        "server_5xx": sum(r.status is not None and r.status >= 500 for r in replies),
        "rss_start_mib": mib(samples[0][1]), "rss_after_warmup_mib": mib(base),
        "rss_end_mib": mib(end), "rss_peak_mib": mib(sampler.peak),
        "rss_growth_after_warmup_pct": round(100 * growth, 2),
        "rss_series_mib": [[round(t), mib(v)] for t, v in samples[:: max(1, len(samples) // 60)]],
    }


# -- report ----------------------------------------------------------------------------------------

def markdown(report: dict[str, Any], passed: bool) -> str:
    report = dict(report)
    errors = []
    for name in ("corpus", "schemathesis", "overload", "faults", "soak"):
        section = report.get(name)
        if isinstance(section, dict) and "error" in section:
            errors.append(f"- **{name}** stopped with an error:\n\n```\n{section['error']}```")
            report[name] = None
    if isinstance(report.get("faults"), dict):
        report["faults"] = dict(report["faults"])
        for name, fault in list(report["faults"].items()):
            if isinstance(fault, dict) and "error" in fault:
                errors.append(f"- **fault {name}** stopped with an error:\n\n```\n"
                              f"{fault['error']}```")
                del report["faults"][name]
    lines = [f"# Reliability ({'quick' if report['quick'] else 'full'} run)", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
             f"{report['machine']['torch']}; load average before: {report['load_before']}, "
             f"after: {report['load_after']}. Commit {report['commit']}. Service: `python -m "
             f"service` on 127.0.0.1, CPU, shipped models {STYLE} and {SR_MODEL}, "
             f"SERVICE_TORCH_THREADS=1 (one core computes; the other serves HTTP and runs this "
             f"load generator). Limits: "
             + ", ".join(f"{k}={v}" for k, v in report["limits"].items()) + ".", ""]
    c = report.get("corpus")
    if c:
        lines += ["## Hostile input", "",
                  f"{c['as_expected']}/{c['cases']} cases answered as expected; server 5xx: "
                  f"{c['server_5xx']}; no answer: {len(c['no_answer'])}; slowest "
                  f"{c['slowest_s']} s. Idle RSS {c['idle_rss_mib']} MiB; peak RSS of any "
                  f"refused case {c['peak_rss_refused_max_mib']} MiB "
                  f"({c['peak_rss_refused_max_case']}); of the largest allowed request "
                  f"{c['peak_rss_largest_allowed_mib']} MiB; every case within it: "
                  f"{c['rss_bounded']}.", "",
                  "| case | expected | got | s | peak RSS MiB | why |",
                  "| --- | --- | --- | ---: | ---: | --- |"]
        for r in c["rows"]:
            exp = f"{r['expected'][0]} {r['expected'][1] or ''}".strip()
            got = f"{r['got'][0]} {r['got'][1] or ''}".strip()
            mark = "" if r["ok"] else " **≠**"
            lines.append(f"| {r['name']} | {exp} | {got}{mark} | {r['seconds']} | "
                         f"{r['peak_rss_mib']} | {r['why']} |")
        lines.append("")
    s = report.get("schemathesis")
    if s:
        lines += ["## Schemathesis", ""]
        if "skipped" in s:
            lines += [s["skipped"], ""]
        else:
            lines += [f"{s['requests']} generated requests ({s['examples_per_operation']} "
                      f"examples per operation and mode); 5xx: {s['server_5xx']}; failed "
                      f"checks: {s['failures']}.", "", "| operation | mode | statuses |",
                      "| --- | --- | --- |"]
            lines += [f"| {r['operation']} | {r['mode']} | {r['statuses']}"
                      f"{' FAILED' if r['failure'] else ''} |" for r in s["operations"]]
            lines.append("")
    o = report.get("overload")
    if o:
        lines += ["## Overload", "",
                  f"{o['image']}, {o['model']}. Alone: p50 {o['latency_alone_p50_ms']} ms. "
                  f"Capacity {o['capacity_rps']} req/s ({o['capacity_clients']} closed-loop "
                  f"clients, p99 {o['capacity_closed_loop_p99_ms']} ms).", "",
                  f"Offered {o['offered_rps']} req/s (10x, Poisson) for {o['duration_s']} s; "
                  f"sent {o['sent']} ({o['achieved_send_rps']} req/s achieved): "
                  f"{o['ok']} admitted and answered 200 ({o['ok_rps']} req/s), p50 "
                  f"{o['admitted_p50_ms']} ms, p99 {o['admitted_p99_ms']} ms, max "
                  f"{o['admitted_max_ms']} ms (server side: p99 ≤ "
                  f"{o['admitted_p99_server_le_ms']} ms by its histogram; the queue limit over "
                  f"the measured capacity: ~{o['admitted_p99_bound_ms']} ms, over the "
                  f"throughput during the overload: ~"
                  f"{o['admitted_wait_at_overload_throughput_ms']} ms); "
                  f"{o['shed_429']} shed with 429 "
                  f"({o['shed_with_retry_after']} with Retry-After), p50 {o['shed_p50_ms']} ms, "
                  f"p99 {o['shed_p99_ms']} ms (server side: p99 ≤ "
                  f"{o.get('shed_p99_server_le_ms')} ms); other outcomes: {o['other']}. Statuses "
                  f"{o['statuses']}; rejections by reason {o['rejections_by_reason']}.", "",
                  f"Forward passes at capacity {o['forward_at_capacity']}, during the "
                  f"overload {o['forward_during_overload']}.", "",
                  f"RSS {o['rss_before_mib']} MiB before, peak {o['rss_peak_mib']} MiB. Queue "
                  f"drained {o['queue_drained_s']} s after the last arrival; then 20 requests: "
                  f"{o['after']['statuses']}, p50 {o['after']['p50_ms']} ms.", ""]
    f = report.get("faults")
    if f:
        lines += ["## Faults", ""]
        if "redis" in f:
            r = f["redis"]
            lines += [f"- **Redis killed and restarted** under 8 clients for {r['duration_s']} "
                      f"s (killed at {r['killed_at_s']} s, restarted at {r['restarted_at_s']} "
                      f"s): {r['requests']} requests, {r['failed']} failed; first cache hit "
                      f"{r['first_hit_after_restart_s']} s after the restart; phases "
                      f"{r['phases']}."]
        if "raising_model" in f:
            r = f["raising_model"]
            lines += [f"- **A forward that raises**: {r['requests']} requests, 16 clients, "
                      f"{r['poisoned']} poisoned; {r['failed_batches']} of {r['batches']} "
                      f"batches raised, holding {r['requests_in_failed_batches']} requests; "
                      f"{r['answered_500']} answered 500, exactly those: "
                      f"{r['500s_exactly_the_failed_batches']}; all others 200: "
                      f"{r['others_200']}; a request after: {r['after_status']}."]
        if "disconnects" in f:
            r = f["disconnects"]
            lines += [f"- **Clients leaving in bulk**: {r['clients_leaving']} "
                      f"({r['mid_upload']} mid-upload, {r['after_upload']} after it, 256x256 "
                      f"images; {r['answered_before_leaving']} answered before they left); "
                      f"{r['disconnects_counted']} disconnects counted; idle again "
                      f"{r['seconds_to_idle']} s later: queue depth {r['queue_depth_after']}, "
                      f"in flight {r['inflight_after']}; requests of a client that stayed: "
                      f"{r['staying_clients_ok']}/{r['staying_clients']} OK (after "
                      f"{r['staying_retries_after_429']} retries on 429); RSS "
                      f"{r['rss_before_mib']} -> peak {r['rss_peak_mib']} -> "
                      f"{r['rss_after_mib']} MiB."]
        if "sigterm" in f:
            r = f["sigterm"]
            lines += [f"- **SIGTERM under load** (16 clients): exit code {r['exit_code']}; "
                      f"server log {r['server_logged']}; clients saw {r['client_outcomes']}; "
                      f"every admitted request completed: {r['every_admitted_completed']}."]
        lines.append("")
    k = report.get("soak")
    if k:
        lines += ["## Soak", "",
                  f"{k['duration_s']:g} s of mixed load ({k['clients']} closed-loop clients, "
                  f"{k['rps']} req/s: {k['mix']}). Unexpected answers: {k['unexpected'] or 0}; "
                  f"5xx: {k['server_5xx']}. RSS {k['rss_start_mib']} MiB at start, "
                  f"{k['rss_after_warmup_mib']} MiB after the {k['warmup_s']:g} s warm-up, "
                  f"{k['rss_end_mib']} MiB at the end (peak {k['rss_peak_mib']}): growth after "
                  f"warm-up {k['rss_growth_after_warmup_pct']} %.", ""]
    if errors:
        lines += ["## Errors", "", *errors, ""]
    lines += [f"Verdict: {'every claim held' if passed else 'NOT every claim held (see above)'}.",
              ""]
    return "\n".join(lines)


def commit() -> str | None:
    """The commit measured: BENCH_COMMIT (for an exported tree), else git's HEAD."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    with suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sections = args.only.split(",") if args.only else ["corpus", "schemathesis", "overload",
                                                        "faults", "soak"]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    report: dict[str, Any] = {
        "quick": args.quick, "machine": describe(), "load_before": load_average(),
        "limits": {k: v for k, v in vars(LIMITS).items()}, "logs": str(log_dir),
        "commit": commit()}
    overload_s = args.overload_s or (10.0 if args.quick else 60.0)
    soak_s = args.soak_s if args.soak_s is not None else (60.0 if args.quick else 900.0)
    steps = {"corpus": lambda: run_corpus(log_dir, args.quick),
             "schemathesis": lambda: run_schemathesis(log_dir, args.quick),
             "overload": lambda: run_overload(log_dir, args.quick, overload_s),
             "faults": lambda: run_faults(log_dir, args.quick),
             "soak": lambda: run_soak(log_dir, soak_s)}
    for name in sections:
        print(f"{name} (load average {load_average()})", flush=True)
        started = time.monotonic()
        report[name] = await guarded(steps[name])
        report[name]["wall_s"] = round(time.monotonic() - started, 1)
    report["load_after"] = load_average()
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs for development (soak 60 s, overload 10 s)")
    parser.add_argument("--soak-s", type=float, default=None, help="soak seconds (default 900)")
    parser.add_argument("--overload-s", type=float, default=None,
                        help="seconds at 10x capacity (default 60)")
    parser.add_argument("--only", help="comma-separated sections: corpus, schemathesis, "
                                       "overload, faults, soak")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "reliability-quick" if args.quick else "reliability"
    if args.only:
        stem += "-" + args.only.replace(",", "-")
    passed = verdict(report)
    report["passed"] = passed
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report, passed) + "\n")
    print(f"wrote {args.out / stem}.json and .md; every claim held: {passed}")
    return 0 if passed else 1


def verdict(report: dict[str, Any]) -> bool:
    """True when every section that ran met its claim (an error in a section fails it)."""
    sections = [report[k] for k in ("corpus", "schemathesis", "overload", "faults", "soak")
                if k in report]
    faults = report.get("faults", {})
    if any("error" in x for x in [*sections, *(v for v in faults.values()
                                                 if isinstance(v, dict))]):
        return False
    checks = []
    if c := report.get("corpus"):
        checks += [not c["not_as_expected"], c["server_5xx"] == 0, not c["no_answer"],
                   c["rss_bounded"]]
    if (s := report.get("schemathesis")) and "skipped" not in s:
        checks += [s["server_5xx"] == 0, s["failures"] == 0]
    if o := report.get("overload"):
        checks += [o["other"] == 0, o["shed_429"] == o["shed_with_retry_after"],
                   set(o["after"]["statuses"]) == {200}]
    if f := faults:
        checks += [f["redis"]["failed"] == 0, f["redis"]["first_hit_after_restart_s"] is not None,
                   f["raising_model"]["500s_exactly_the_failed_batches"],
                   f["raising_model"]["others_200"], f["disconnects"]["queue_depth_after"] == 0,
                   f["disconnects"]["inflight_after"] == 0,
                   f["sigterm"]["exit_code"] == 0, f["sigterm"]["every_admitted_completed"]]
    if k := report.get("soak"):
        checks += [not k["unexpected"], k["rss_growth_after_warmup_pct"] < 5]
    return all(checks)
