"""The soak section: mixed load for --soak-s seconds, RSS growth after warm-up."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from bench import hostile
from bench.reliability.client import PNG, Client, Inputs, Reply, closed_loop
from bench.reliability.process import FACTOR, LIMITS, STYLE, RssSampler, service
from bench.reliability.stats import MiB, mib


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
