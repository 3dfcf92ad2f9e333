"""The README's quote of the benchmarks: one markdown block from the JSON under bench/results.

`python -m report readme` writes it between the README's generated:bench markers, and
tests/test_readme_figures.py checks its numbers against the same JSON, so the README never
says what no command measured. A result that is missing (or an interrupted `bench model`) is
left out of the block.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.machine import caption

RESULTS = Path(__file__).resolve().parent / "results"
SETUPS = {"measured": "measured policy (default)", "no_batching": "no batching",
          "one_lane": "one forward pass at a time", "fixed": "fixed batches of up to 8"}


def readme_block(results: Path = RESULTS) -> str | None:
    parts = [model_part(_load(results / "model-cpu.json")),
             *(gpu_part(_load(p)) for p in sorted(results.glob("model-cuda*.json"))),
             service_part(_load(results / "service-cpu.json")),
             *(service_part(_load(p)) for p in sorted(results.glob("service-cuda*.json"))),
             cache_part(_load(results / "cache.json"))]
    return "\n\n".join(p for p in parts if p) or None


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def model_part(doc: dict | None) -> str:
    """Batch 1: the service's execution path against eager fp32, per network and size."""
    if not doc or not doc.get("complete"):
        return ""
    rows = ["| network | output size | eager fp32 | service path | speed-up | with lanes |",
            "| :--- | ---: | ---: | ---: | ---: | ---: |"]
    for s in sorted(doc["summary"], key=lambda s: (s["network"] != "style", s["network"])):
        lanes = (f"{s['service_lanes_speedup']:.2f}× ({s['service_lanes']} lanes)"
                 if "service_lanes_speedup" in s else "—")
        rows.append(f"| `{s['network']}` | {s['size']}×{s['size']} | {s['baseline_ms']:,.1f} ms "
                    f"| `{s['service_path']}` {s['service_ms']:,.1f} ms "
                    f"| {s['service_speedup']:.2f}× | {lanes} |")
    return (f"Forward pass (`python -m bench model`, {caption(doc)}), batch 1: the execution "
            "path the service picks (the fastest within one grey level of float32) against "
            "eager fp32, as the reference implementations run; medians of the same timing "
            "rounds. The speed-up is one request's latency; with lanes, the throughput of "
            "single-image forwards running at once on a share of the threads each, as the "
            "service runs them under load on a CPU. Target: 1.6× for the style network at 256 "
            "and 512.\n\n" + "\n".join(rows))


def gpu_part(doc: dict | None) -> str:
    """The style network on a GPU: best fp16 throughput at 256, best latency at 1024."""
    if not doc:
        return ""
    style = [r for r in doc["results"] if r["network"] == "style" and "latency_ms" in r]
    fp16 = [r for r in style if r["size"] == 256 and "fp16" in r["path"]]
    big = [r for r in style if r["size"] == 1024 and r["batch"] == 1]
    if not fp16 or not big:
        return ""
    top = max(fp16, key=lambda r: r["images_per_s"])
    fast = min(big, key=lambda r: r["latency_ms"])
    return (f"On an {doc['machine']['gpu']} (torch {doc['machine']['torch']}, "
            f"`bench/results/model-cuda*.json`): the style network at 256×256 in fp16 runs "
            f"{top['images_per_s']:,.0f} images/s (`{top['path']}`, batch {top['batch']}; "
            f"target 2,000), and a 1024×1024 image takes {fast['latency_ms']:.2f} ms "
            f"(`{fast['path']}`, batch 1; target under 10 ms).")


def service_part(doc: dict | None) -> str:
    """Throughput by concurrency per configuration, and the issue's targets."""
    if not doc or "targets" not in doc:
        return ""
    size = next(k for s in doc["sweeps"].values() for k in s["runs"] if k != "mixed")
    levels = doc["levels"]
    rows = ["| setup | " + " | ".join(str(c) for c in levels) + " |",
            "| :--- |" + " ---: |" * len(levels)]
    for name, sweep in doc["sweeps"].items():
        at = {r["concurrency"]: r["throughput_per_s"] for r in sweep["runs"].get(size, [])}
        rows.append(f"| {SETUPS.get(name, name)} | "
                    + " | ".join(f"{at[c]:.2f}" if c in at else "—" for c in levels) + " |")
    t = doc["targets"]
    bracket = " (the mean of its timings just before and after the sweep)" if (
        "raw_after" in doc["sweeps"].get("measured", {})) else ""
    goals = ["| target | measured | met |", "| :--- | ---: | :---: |"]
    if "conc8_throughput_vs_raw_best" in t:
        goals.append(f"| throughput at 8 clients ≥ 0.85 × the raw model's best "
                     f"| {t['conc8_throughput_vs_raw_best']:.2f}× "
                     f"| {_yes(t['conc8_target_0.85_met'])} |")
    if "conc1_p50_minus_raw_batch1_ms" in t:
        turns = doc["sweeps"]["measured"]["one_client_in_turns"]
        goals.append(f"| p50 at 1 client within 10 ms of the raw batch-1 latency "
                     f"({turns['pairs']} of each in turns: {turns['http_p50_ms']:.1f} against "
                     f"{turns['raw_batch1_p50_ms']:.1f} ms) "
                     f"| {t['conc1_p50_minus_raw_batch1_ms']:+.1f} ms "
                     f"| {_yes(t['conc1_target_10ms_met'])} |")
    if "conc16_vs_conc4_throughput" in t:
        goals.append(f"| throughput at 16 clients ≥ at 4 | {t['conc16_vs_conc4_throughput']:.2f}× "
                     f"| {_yes(t['conc16_target_met'])} |")
    top = max(levels)
    if f"batching_vs_no_batching_at_{top}" in t and doc["device"] == "cuda":
        goals.append(f"| batching ≥ 3 × no batching at {top} clients "
                     f"| {t[f'batching_vs_no_batching_at_{top}']:.2f}× "
                     f"| {_yes(t[f'batching_vs_no_batching_at_{top}'] >= 3)} |")
    goals.append(f"| no errors | {t['errors_total']} | {_yes(t['zero_errors_met'])} |")
    rounds = max((r.get("rounds", 1) for s in doc["sweeps"].values()
                  for r in s["runs"].get(size, [])), default=1)
    pooled = (f"each level's windows pooled over {rounds} rounds" if rounds > 1
              else "one window each")
    return (f"Service (`python -m bench service`, {caption(doc)}): closed-loop clients posting "
            f"distinct {size}×{size} images over HTTP, cache off; images/s by number of "
            f"clients ({pooled}). The raw model (the service's "
            f"own code, no HTTP) in the same run{bracket}: {t['raw_best_images_per_s']:.2f} "
            f"images/s at best, {t['raw_batch1_latency_ms']:.1f} ms at batch 1. The 1-client "
            f"target compares requests and raw forwards taken in turns, seconds apart: this "
            f"machine's speed drifts by tens of percent within minutes"
            + (f" (the sweep's 1-client p50 against those raw timings: "
               f"{t['conc1_sweep_p50_minus_raw_batch1_ms']:+.1f} ms)"
               if "conc1_sweep_p50_minus_raw_batch1_ms" in t else "") + ".\n\n"
            + "\n".join(rows) + "\n\n" + "\n".join(goals))


def cache_part(doc: dict | None) -> str:
    """The hit path: one get at a time from each backend, and a hit over HTTP."""
    if not doc or "p50_ms" not in doc["cache"].get("redis", {}):
        return ""
    c, side = doc["cache"], doc["value_side"]
    http = doc["http"].get("redis", {}).get("levels", [{}])[0].get("p50_ms")
    return (f"Cache (`python -m bench cache`, {caption(doc)}): a hit on a {side}×{side} result "
            f"({doc['value_bytes'] / 1024:,.0f} KiB PNG) takes p50 {c['redis']['p50_ms']:.2f} ms "
            f"from Redis (target under 3 ms) and {c['memory']['p50_ms']:.3f} ms in process"
            + (f"; the whole request over HTTP, answered from Redis, p50 {http:.1f} ms."
               if http is not None else "."))
