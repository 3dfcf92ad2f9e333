"""The README's quote of the benchmarks: one markdown block from the JSON under bench/results.

`python -m report readme` writes it between the README's generated:bench markers, and
tests/test_readme_figures.py checks its numbers against the same JSON, so the README never
says what no command measured. A result that is missing (or an interrupted `bench model`) is
left out of the block.
"""

from __future__ import annotations

import json
import re
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
             stub_part(_load(results / "service-stub.json")),
             cache_part(_load(results / "cache.json")),
             live_part(_load(results / "live.json"))]
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
    """The style network on a GPU, on the paths the service runs (`service_paths`, which bench
    model records): best throughput at 256, best latency at 1024. A run that records none
    (an older bench model, which timed benchmark-only paths) is not quoted."""
    if not doc:
        return ""
    served = set(doc.get("service_paths", []))
    style = [r for r in doc["results"] if r["network"] == "style" and "latency_ms" in r
             and r["path"] in served]
    small = [r for r in style if r["size"] == 256]
    big = [r for r in style if r["size"] == 1024 and r["batch"] == 1]
    if not small or not big:
        return (f"GPU: no figures of the service's own paths yet. The one GPU run "
                f"(`bench/results/model-cuda*.json`, {doc['machine']['gpu']}) predates them "
                f"(CUDA graphs, fp16 in both layouts, pinned staging) and timed "
                f"benchmark-only paths; `bash bench/gpu.sh` on a GPU measures them.")
    top = max(small, key=lambda r: r["images_per_s"])
    fast = min(big, key=lambda r: r["latency_ms"])
    return (f"On an {doc['machine']['gpu']} (torch {doc['machine']['torch']}, "
            f"`bench/results/model-cuda*.json`), on the service's own paths: the style network "
            f"at 256×256 runs {top['images_per_s']:,.0f} images/s (`{top['path']}`, batch "
            f"{top['batch']}; target 2,000), and a 1024×1024 image takes "
            f"{fast['latency_ms']:.2f} ms (`{fast['path']}`, batch 1; target under 10 ms).")


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


KINDS = {"photo_jpeg": "photo, JPEG in and out", "noise_png": "noise, PNG in and out"}


def stub_part(doc: dict | None) -> str:
    """The front end against a recorded GPU (`bench service --device stub`): requests/s by
    clients per body and worker count, server CPU per request, and the issue's targets."""
    if not doc or "targets" not in doc:
        return ""
    levels, top, t = doc["levels"], max(doc["levels"]), doc["targets"]
    rows = ["| body, workers | " + " | ".join(str(c) for c in levels)
            + f" | server CPU ms / request at {top} |",
            "| :--- |" + " ---: |" * (len(levels) + 1)]
    for kind, label in KINDS.items():
        for config in doc["configs"]:
            at = {r["concurrency"]: r for r in config["runs"].get(kind, [])}
            if not at:
                continue
            cpu = at[top].get("server_cpu_ms_per_request") if top in at else None
            rows.append(f"| {label}, {config['workers']} | "
                        + " | ".join(f"{at[c]['throughput_per_s']:,.0f}" if c in at else "—"
                                     for c in levels)
                        + (f" | {cpu:.2f} |" if cpu is not None else " | — |"))
    ceilings = "; ".join(f"{KINDS[k]}: decode {c['decode_cpu_ms']:.2f} + encode "
                         f"{c['encode_cpu_ms']:.2f} CPU ms, {c['images_per_s']:,.0f}/s on "
                         f"{c['processes']} cores" for k, c in doc["codec_ceiling"].items())
    workers = max(c["workers"] for c in doc["configs"])
    goals = ["| front-end target | measured | met |", "| :--- | ---: | :---: |"]
    ratio = t.get(f"noise_png_{workers}w_at_{top}_vs_codec_ceiling")
    if ratio is not None:
        goals.append(f"| at {top} clients ≥ 0.9 × the codec-only ceiling (noise PNG, "
                     f"{workers} workers) | {ratio:.2f}× | {_yes(t['codec_ceiling_0.9_met'])} |")
    for kind in KINDS:
        r = t.get(f"{kind}_two_workers_vs_one_at_{top}")
        if r is not None:
            goals.append(f"| two workers ≥ one at {top} clients ({KINDS[kind]}) | {r:.2f}× "
                         f"| {_yes(r >= 1.0)} |")
    ratios = [f"{KINDS[m.group(1)]}, {m.group(2)}: {v:.2f}×" for k, v in t.items()
              if (m := re.fullmatch(rf"(\w+)_(\d+)w_{top}_vs_16", k))]
    lower = [f"{KINDS[m.group(1)]}, {m.group(2)} worker(s)" for k, v in t.items()
             if not v and (m := re.fullmatch(r"(\w+)_(\d+)w_\d+_not_below_\d+", k))]
    goals.append(f"| never lower at {top} clients than at 16 (lower in every round) | "
                 + "; ".join(ratios)
                 + (f" (lower: {'; '.join(lower)})" if lower else "")
                 + f" | {_yes(t['never_lower_at_64_than_16_met'])} |")
    cpu = t.get(f"photo_jpeg_{workers}w_server_cpu_ms_per_request_at_{top}")
    if cpu is not None:
        goals.append(f"| server CPU per request ≤ 3 ms (photo JPEG, {workers} workers, all "
                     f"processes) | {cpu:.2f} ms | {_yes(t['jpeg_cpu_3ms_met'])} |")
    goals.append(f"| no errors | {t['errors_total']} | {_yes(t['errors_total'] == 0)} |")
    curve = doc["curve"]
    return (f"Front end (`{doc.get('command', 'python -m bench service --device stub')}`, "
            f"{caption(doc)}): the whole service but the forward pass, which waits as long as "
            f"the recorded GPU took for the batch (`{curve['source']}`, fastest path at "
            f"{curve['side']}×{curve['side']}; {doc['stub_ceiling']['images_per_s']:,.0f} "
            f"images/s at best, batch {doc['stub_ceiling']['at_batch']}). Closed-loop clients "
            f"(a raw HTTP/1.1 client on the same cores) posting distinct {doc['size']}×"
            f"{doc['size']} images; requests/s by number of clients. The codec-only ceiling "
            f"(decode and encode alone, one process per core): {ceilings}.\n\n"
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


def live_part(doc: dict | None) -> str:
    """The store changed under the `bench service` load: models swapped, a style learned."""
    if not doc or "swap" not in doc or "learn" not in doc:
        return ""
    w, n = doc["swap"], doc["learn"]
    seconds = [s["seconds"] for s in w["swaps"]]
    answers = w["outside"]["answers"] + w["during"]["answers"]
    served = (f"served {n['served_after_s'] / 60:.1f} minutes after the upload"
              if n["served_status"] == 200 else
              f"not served ({n['state']}: {(n['error'] or {}).get('code')})")
    return (f"Changes while serving (`python -m bench live`, {caption(doc)}): {w['concurrency']} "
            f"closed-loop clients posting distinct {w['size']}×{w['size']} images to "
            f"`{w['model']}`, as `bench service` loads it. {len(seconds)} new versions of "
            f"`{w['model']}` picked up by `POST /admin/models/reload`, each in "
            f"{min(seconds):.0f}-{max(seconds):.0f} s (the reload yields the cores to the "
            f"requests): {w['lost']} of {answers:,} answers lost; p99 "
            f"{w['outside']['p99_ms']:,.0f} ms outside the reloads, "
            f"{w['during']['p99_ms']:,.0f} ms overlapping one or the 2 s after it "
            f"({w['p99_ratio']:.2f}×; target at most 2×: {_yes(w['p99_within'])}). A painting "
            f"(`{n['painting']}`) uploaded to "
            f"`POST /v1/styles` under the same load: learned in {n['steps']} steps, {served} "
            f"(target 10 minutes: {_yes(n['within_target'])}); the other requests: "
            f"{n['during']['answers']:,} answers meanwhile, {n['others_failed']} failed, p99 "
            f"{n['before']['p99_ms']:,.0f} ms before and {n['during']['p99_ms']:,.0f} ms during.")
