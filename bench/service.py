"""`python -m bench service`: the service under closed-loop load, against the raw model.

1. Raw: the service's own model code (`Registry` with the measured policy, `LoadedModel.run`:
   uint8 in, uint8 out) in this process, before any server runs: batch-1 latency, and the best
   throughput over batch sizes and concurrent single-image forwards ("lanes"), per size; and
   again for the one size just before each configuration's sweep (the targets use that one).
2. Sweeps: the service as a subprocess on 127.0.0.1 (shipped models, cache off), driven by
   `bench.load` in another process at each concurrency, with distinct images of one size and
   with a mix of sizes, for each configuration:
   - `measured`: the defaults, batch policy measured at warm-up;
   - `no_batching`: the same with max_batch_size=1;
   - `one_lane`: the same with one forward pass at a time on all the threads (the lanes the
     policy may choose on a CPU are what this compares);
   - `fixed`: the service before the batch policy (plain torch, batches of up to 8, one forward
     at a time), what a serving framework that fills batches does.
   Each level: throughput, p50/p95/p99 latency, errors, and the batch-size distribution read
   from /metrics. The one-size run visits its levels in `--rounds` rounds of alternating order
   and pools each level's windows (bench.load), so that the machine's drift does not decide
   the comparison of two levels.
3. One client in turns with the raw model (`in_turns`), after each one-size run: a request,
   then a raw batch-1 forward, and so on; the 1-client target compares these.
4. Targets from the issue, computed on this run's own numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import frontend
from bench.machine import describe, load_average, wait_until_quiet
from bench.output import by_concurrency, figure, finish, write_json
from bench.server import PHOTOS, drive, load_settings, photo_pngs, serve

CONFIGS = {
    "measured": {},
    "no_batching": {"SERVICE_MAX_BATCH_SIZE": "1"},
    "one_lane": {"SERVICE_LANES": "1"},
    "fixed": {"SERVICE_BATCH_POLICY": "fixed", "SERVICE_MAX_BATCH_SIZE": "8"},
}


class RawModel:
    """The service's own model code in this process (`Registry`, `LoadedModel.run`: uint8 in,
    uint8 out), no HTTP: what the forward passes of the requests cost by themselves."""

    def __init__(self, model: str, device: str, policy: str = "measure") -> None:
        from model_store import SHIPPED_ROOT
        from service.registry import Registry

        started = time.monotonic()
        self.registry = Registry(SHIPPED_ROOT, [model], device, "auto", policy=policy)
        (self.model,) = self.registry.load_all()
        self.device = device
        self.info: dict = {"policy": self.model.policy.as_dict(), "lanes": self.registry.lanes,
                           "threads": self.registry.threads,
                           "load_s": time.monotonic() - started}
        self._photos: dict[tuple[Path, int], list[np.ndarray]] = {}   # made once per side

    def photos(self, side: int, images: Path) -> list[np.ndarray]:
        """Eight distinct photos of `side` x `side` pixels, as the service decodes them."""
        if (images, side) not in self._photos:
            with tempfile.TemporaryDirectory() as tmp:
                self._photos[images, side] = [np.asarray(_open(p)) for p in
                                              photo_pngs(images, [side], 8, Path(tmp))]
        return self._photos[images, side]

    def measure(self, side: int, images: Path, min_s: float) -> dict:
        """Batch-1 latency and the best throughput of batches 1, 2, 4 and (CPU) two lanes."""
        from service import execution

        m, threads, arrays = self.model, self.registry.threads, self.photos(side, images)
        res: dict = {"path": m.policy.choose(side, side).path, "load_average": load_average()}
        execution.use_threads(threads)
        for batch in (1, 2, 4):
            times = _repeat(lambda b=batch, a=arrays: m.run(a[:b]), min_s)
            res[f"batch{batch}_ms"] = 1000 * statistics.median(times)
            res[f"batch{batch}_images_per_s"] = batch / statistics.median(times)
        if self.device == "cpu" and threads > 1:
            res["lanes_images_per_s"] = _lanes(m.run, arrays, threads, reps=3)
        res["batch1_latency_ms"] = res["batch1_ms"]
        res["best_images_per_s"] = max(v for k, v in res.items() if k.endswith("images_per_s"))
        print(json.dumps({"raw": side, **res}), flush=True)
        return res


def _open(path: Path):  # noqa: ANN202 - PIL image
    from PIL import Image
    return Image.open(path).convert("RGB")


def _repeat(fn, min_s: float, min_runs: int = 3) -> list[float]:  # noqa: ANN001
    fn()
    times: list[float] = []
    while len(times) < min_runs or sum(times) < min_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _lanes(run, arrays: list[np.ndarray], threads: int, reps: int) -> float:  # noqa: ANN001
    """Images/s with two single-image forwards at once on half the threads each (whether or
    not the policy chose lanes: the raw best is the best of everything); `reps` each, timed
    from a common start to the last finish."""
    from service import execution

    lanes = 2
    barrier = threading.Barrier(lanes)
    start: list[float] = []
    ends: list[float] = []

    def work(i: int) -> None:
        execution.use_threads(threads // lanes)
        run(arrays[i:i + 1])                 # warm-up on this thread
        if barrier.wait() == 0:
            start.append(time.perf_counter())
        for _ in range(reps):
            run(arrays[i:i + 1])
        ends.append(time.perf_counter())

    workers = [threading.Thread(target=work, args=(i,)) for i in range(lanes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    execution.use_threads(threads)
    return lanes * reps / (max(ends) - start[0])


def sweep(name: str, settings: dict[str, str], bodies: dict[str, list[Path]], levels: list[int],
          args: argparse.Namespace, log: Path, raw: RawModel) -> dict:
    """One configuration: start the service, measure the raw model again while it idles (the
    load on a shared machine drifts: the targets compare numbers taken minutes apart at most),
    then each run's levels, and the raw model once more after the one-size run: its levels come
    first and last in their rounds, so the two raw timings bracket them alike."""
    sides = [args.size, *(int(s) for s in args.mixed.split(",") if s)]
    env = {"SERVICE_MODELS": args.model,
           **load_settings(args.device, args.max_batch_size, max(sides), levels), **settings}
    started = time.monotonic()
    with serve(env, log) as url:
        import httpx
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
        result: dict = {"settings": env, "start_s": time.monotonic() - started,
                        "policy": models[0].get("policy"), "runs": {},
                        "raw": raw.measure(args.size, Path(args.images), args.raw_min_s)}
        for run_name, files in bodies.items():
            print(f"{name} / {run_name}", flush=True)
            result["runs"][run_name] = drive(
                url, route(args.model), files, levels,
                duration_s=args.duration_s, warmup_s=args.warmup_s, min_done=args.min_done,
                max_s=args.max_level_s, rounds=1 if run_name == "mixed" else args.rounds)
            if run_name != "mixed":
                result["raw_after"] = raw.measure(args.size, Path(args.images), args.raw_min_s)
                result["one_client_in_turns"] = in_turns(
                    url, route(args.model), files, raw, args.size,
                    Path(args.images), args.pairs)
    return result


def route(model: str) -> str:
    """The request path that runs `model`: a style network by its style, a super-resolution
    one by its factor and name."""
    from model_store import SHIPPED_ROOT, ModelStore

    manifest = ModelStore(SHIPPED_ROOT).manifest(model)
    if manifest.task == "superres":
        return f"/v1/superres?factor={manifest.factor}&model={model}"
    return f"/v1/stylize?style={model}"


def in_turns(url: str, path: str, files: list[Path], raw: RawModel, side: int, images: Path,
             pairs: int) -> dict:
    """One client against the raw model, in turns: one request over HTTP, then one batch-1
    forward in this process, `pairs` times. The machine's speed drifts by tens of percent
    within minutes, so the 1-client target compares timings taken seconds apart, not the
    sweep's window against raw timings from before and after it."""
    import httpx

    from service import execution

    bodies = [f.read_bytes() for f in files[:8]]
    arrays = raw.photos(side, images)
    execution.use_threads(raw.registry.threads)
    http: list[float] = []
    forward: list[float] = []
    parts: dict[str, list[float]] = {}        # the service's Server-Timing
    with httpx.Client(base_url=url, timeout=300,
                      headers={"content-type": "image/png"}) as client:
        for i in range(-1, pairs):            # the first pair warms both up, untimed
            t0 = time.perf_counter()
            answer = client.post(path, content=bodies[i % len(bodies)]).raise_for_status()
            t1 = time.perf_counter()
            raw.model.run([arrays[i % len(arrays)]])
            t2 = time.perf_counter()
            if i >= 0:
                http.append(1000 * (t1 - t0))
                forward.append(1000 * (t2 - t1))
                for part in answer.headers["server-timing"].split(", "):
                    name, dur = part.split(";dur=")
                    parts.setdefault(name, []).append(float(dur))
    res: dict[str, Any] = {"pairs": pairs, "http_p50_ms": statistics.median(http),
           "raw_batch1_p50_ms": statistics.median(forward),
           "server_timing_p50_ms": {k: statistics.median(v) for k, v in parts.items()}}
    res["p50_minus_raw_ms"] = res["http_p50_ms"] - res["raw_batch1_p50_ms"]
    print(json.dumps({"one_client_in_turns": side, **res}), flush=True)
    return res


def targets(result: dict, one: str) -> dict:
    """The issue's CPU targets, on this run's numbers (None where the run lacks the data)."""
    measured = result["sweeps"].get("measured", {})
    timings = [r for r in (measured.get("raw"), measured.get("raw_after")) if r] or [
        result["raw"]["sizes"].get(one, {})]
    raw_side = {k: statistics.mean(r[k] for r in timings)
                for k in ("batch1_latency_ms", "best_images_per_s") if all(k in r for r in timings)}
    runs = measured.get("runs", {}).get(one, [])
    at = {r["concurrency"]: r for r in runs}
    t: dict = {f"raw_{k}": v for k, v in raw_side.items()}   # the mean of the raw timings
    if 8 in at and raw_side:
        t["conc8_throughput_vs_raw_best"] = at[8]["throughput_per_s"] / raw_side[
            "best_images_per_s"]
        t["conc8_target_0.85_met"] = t["conc8_throughput_vs_raw_best"] >= 0.85
    if 1 in at and raw_side and at[1]["p50_ms"] is not None:   # shown, not the target
        t["conc1_sweep_p50_minus_raw_batch1_ms"] = (at[1]["p50_ms"]
                                                    - raw_side["batch1_latency_ms"])
    if "one_client_in_turns" in measured:
        t["conc1_p50_minus_raw_batch1_ms"] = measured["one_client_in_turns"]["p50_minus_raw_ms"]
        t["conc1_target_10ms_met"] = t["conc1_p50_minus_raw_batch1_ms"] <= 10
    if 16 in at and 4 in at:
        t["conc16_vs_conc4_throughput"] = at[16]["throughput_per_s"] / at[4]["throughput_per_s"]
        t["conc16_target_met"] = at[16]["throughput_per_s"] >= at[4]["throughput_per_s"]
    errors = sum(r["errors_total"] for s in result["sweeps"].values()
                 for rs in s["runs"].values() for r in rs)
    t["errors_total"] = errors
    t["zero_errors_met"] = errors == 0
    nb = result["sweeps"].get("no_batching", {}).get("runs", {}).get(one, [])
    top = max(result["levels"])
    mb = {r["concurrency"]: r for r in nb}
    if top in at and top in mb:
        t[f"batching_vs_no_batching_at_{top}"] = (at[top]["throughput_per_s"]
                                                  / mb[top]["throughput_per_s"])
    return t


def plot(result: dict, out: Path) -> None:
    with figure(out, result, f"python -m bench service: {result['model']}", ncols=2,
                figsize=(12, 4.8)) as (a, b):
        for config, sweep_ in result["sweeps"].items():
            for run_name, rows in sweep_["runs"].items():
                x = [r["concurrency"] for r in rows]
                style = "-" if run_name != "mixed" else "--"
                label = f"{config}, {run_name}"
                a.plot(x, [r["throughput_per_s"] for r in rows], style, marker="o", label=label)
                b.plot(x, [r["p99_ms"] for r in rows], style, marker="o", label=label)
        for side, raw_ in result["raw"]["sizes"].items():
            a.axhline(raw_["best_images_per_s"], color="grey", lw=0.8, ls=":")
            a.annotate(f"raw best {side}px", (1, raw_["best_images_per_s"]), fontsize=7)
        by_concurrency(a, "throughput", "images/s", legend_size=7)
        by_concurrency(b, "p99 latency", "ms", legend_size=7)
        b.set_yscale("log")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "stub"],
                   help="stub: the front end against a recorded GPU (bench/frontend.py)")
    p.add_argument("--model", default="udnie")
    p.add_argument("--size", type=int, default=256, help="side of the one-size run")
    p.add_argument("--mixed", default="256,384,512", help="sides of the mixed run ('' off)")
    p.add_argument("--concurrency", default="", help="levels (default 1,2,4,8,16,32; on CUDA "
                                                     "also 64)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--max-batch-size", type=int, default=0,
                   help="cap of the measured policy (default 8 on the CPU, 64 on CUDA); the "
                        "pixel budget follows it")
    p.add_argument("--duration-s", type=float, default=8.0, help="window per level (at least)")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of the one-size run, in alternating order of the levels")
    p.add_argument("--min-done", type=int, default=24, help="answers per window (at least)")
    p.add_argument("--max-level-s", type=float, default=60.0)
    p.add_argument("--pairs", type=int, default=40,
                   help="requests and raw forwards in turns for the 1-client target")
    p.add_argument("--raw-min-s", type=float, default=3.0,
                   help="timed seconds per raw batch size (the median counts)")
    p.add_argument("--raw-policy", default="measure", choices=["measure", "fixed"],
                   help="the raw model's policy (fixed: no warm-up measurement, for tests)")
    p.add_argument("--images", default=str(PHOTOS))
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="first wait (up to 20 min) for a 1-minute load average under this")
    p.add_argument("--out", default="")
    frontend.add_arguments(p)
    args = p.parse_args(argv)
    if args.device == "stub":
        return frontend.main(args)
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    args.max_batch_size = args.max_batch_size or (64 if device == "cuda" else 8)
    levels = [int(c) for c in (args.concurrency or (
        "1,2,4,8,16,32,64" if device == "cuda" else "1,2,4,8,16,32")).split(",")]
    out = Path(args.out or f"bench/results/service-{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    load_start = (wait_until_quiet(args.wait_quiet, 1200) if args.wait_quiet
                  else load_average())
    started = time.monotonic()
    mixed = [int(s) for s in args.mixed.split(",") if s]
    result: dict = {"benchmark": "service", "machine": describe(), "device": device,
                    "model": args.model, "levels": levels, "load_average_start": load_start}
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(args.images)
        count = 2 * max(levels) + 8
        bodies = {str(args.size): photo_pngs(images, [args.size], count, Path(tmp) / "one")}
        if mixed:
            bodies["mixed"] = photo_pngs(images, mixed, count, Path(tmp) / "mixed", seed=1)
        raw = RawModel(args.model, device, args.raw_policy)
        result["raw"] = {**raw.info, "sizes": {str(side): raw.measure(side, images,
                                                                      args.raw_min_s)
                                               for side in sorted({args.size, *mixed})}}
        result["sweeps"] = {}
        log = out.with_suffix(".log")
        log.unlink(missing_ok=True)
        for name in args.configs.split(","):
            result["sweeps"][name] = sweep(name, CONFIGS[name], bodies, levels, args, log, raw)
            write_json(out, result)
    result.update(targets=targets(result, str(args.size)), load_average_end=load_average(),
                  duration_s=round(time.monotonic() - started, 1))
    if device == "cpu":
        result["gpu_sweep"] = "pending: no GPU in this session; run python -m bench service " \
                              "on a CUDA machine"
    return finish(out, result, plot, json.dumps(result["targets"], indent=1))
