"""The corpus section: bench/hostile.py's cases, the answer expected and got, and the
server's peak RSS for each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import hostile
from bench.reliability.client import PNG, Client
from bench.reliability.process import FACTOR, LIMITS, STYLE, service
from bench.reliability.stats import mib

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
