"""Figures from replies and /metrics scrapes: percentiles, units, forward passes, the
server's own latency quantiles."""

from __future__ import annotations

import math
import re
from collections import defaultdict

MiB = 1024 * 1024


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
