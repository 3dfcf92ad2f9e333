"""The overload section: capacity measured closed-loop, then 10x that open-loop."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.reliability.client import PNG, Client, Inputs, Reply, closed_loop
from bench.reliability.process import STYLE, RssSampler, service
from bench.reliability.stats import forward_stats, mib, ms, pct, server_quantile


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
