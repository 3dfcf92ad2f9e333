"""`python -m bench service --device stub`: can the front end feed a GPU? Measured without one.

The real service (`python -m service`: HTTP, decode, admission, batcher, encode, worker
processes) runs with only the forward pass replaced by the stub device (service/stub.py): a
GIL-free wait as long as a recorded GPU took for that batch, by default the H200's fastest
path at 256x256 in `bench/results/model-cuda-h200.json`. In one run:

1. the codec-only ceiling: decode and encode alone (the service's `imaging` functions), one
   process per core, on the same bodies; and the CPU milliseconds of each stage;
2. the stub's own ceiling: the recorded curve's best images/s within the batch limit;
3. the service at 1 to 64 closed-loop clients (bench.load, a raw HTTP/1.1 client in its own
   process), with one worker process and with two, for 256x256 photos as JPEG in and out and
   for 256x256 noise as PNG in and out: requests/s, latency, and the CPU milliseconds per
   request of the server's processes (from /proc) and of the client;
4. the targets of issue 17 on this run's own numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import describe, load_average
from bench.output import by_concurrency, figure, finish, write_json
from bench.server import PHOTOS, ROOT, drive, launch, load_settings, photo_pngs
from service.settings import available_cores

H200 = ROOT / "bench" / "results" / "model-cuda-h200.json"
BODIES = {"photo_jpeg": ("image/jpeg", "jpeg"), "noise_png": ("image/png", "png")}


def recorded_curve(path: Path, side: int, network: str = "style") -> dict:
    """The stub's cost file: per batch size, the fastest recorded path's ms at `side`."""
    rows = [r for r in json.loads(path.read_text())["results"]
            if r.get("network") == network and r.get("size") == side and "latency_ms" in r]
    best: dict[int, float] = {}
    for r in rows:
        best[r["batch"]] = min(best.get(r["batch"], float("inf")), r["latency_ms"])
    if not best:
        raise ValueError(f"{path} has no {network} timings at {side}x{side}")
    return {"side": side, "batch_ms": {str(b): ms for b, ms in sorted(best.items())},
            "source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}


def make_bodies(kind: str, side: int, count: int, out: Path) -> list[Path]:
    """`count` distinct bodies: photos as JPEG (quality 90), or uniform noise as PNG."""
    out.mkdir(parents=True, exist_ok=True)
    if kind == "noise_png":
        rng = np.random.default_rng(0)
        paths = []
        for i in range(count):
            path = out / f"{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        return paths
    paths = []
    for i, png in enumerate(photo_pngs(PHOTOS, [side], count, out / "png")):
        path = out / f"{i:04d}.jpg"
        Image.open(png).save(path, quality=90)
        paths.append(path)
    return paths


def _codec_loop(paths: list[str], fmt: str, seconds: float, start_at: float
                ) -> tuple[int, float, float]:
    """Decode and encode the bodies in turn for `seconds` from `start_at` (one process):
    (images, CPU seconds decoding, CPU seconds encoding)."""
    from service import imaging

    bodies = [Path(p).read_bytes() for p in paths]
    time.sleep(max(0.0, start_at - time.time()))
    n, decode_s, encode_s = 0, 0.0, 0.0
    end = time.time() + seconds
    while time.time() < end:
        t0 = time.process_time()
        decoded = imaging.decode(bodies[n % len(bodies)], max_pixels=1 << 26)
        t1 = time.process_time()
        imaging.encode(decoded.rgb, decoded.alpha, fmt, 90)
        t2 = time.process_time()
        n, decode_s, encode_s = n + 1, decode_s + t1 - t0, encode_s + t2 - t1
    return n, decode_s, encode_s


def codec_ceiling(paths: list[Path], fmt: str, seconds: float) -> dict:
    """Decode + encode alone, one process per core, all at once: images/s, and CPU ms per
    image of each stage."""
    cores = available_cores()    # as the service counts them for its codec threads
    files = [str(p) for p in paths]
    with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        start_at = time.time() + 3.0    # after every process has imported
        runs = [f.result() for f in [pool.submit(_codec_loop, files, fmt, seconds, start_at)
                                     for _ in range(cores)]]
    images = sum(n for n, _, _ in runs)
    return {"processes": cores, "images_per_s": images / seconds,
            "decode_cpu_ms": 1000 * sum(d for _, d, _ in runs) / images,
            "encode_cpu_ms": 1000 * sum(e for _, _, e in runs) / images}


def stub_ceiling(curve: dict, max_batch: int) -> dict:
    per_batch = {int(b): int(b) * 1000 / ms for b, ms in curve["batch_ms"].items()
                 if int(b) <= max_batch}
    best = max(per_batch, key=per_batch.__getitem__)
    return {"images_per_s": per_batch[best], "at_batch": best}


def run_workers(workers: int, cost_file: Path, bodies: dict[str, list[Path]],
                args: argparse.Namespace, log: Path) -> dict:
    env = {**load_settings("stub", args.max_batch_size, args.size, args.levels),
           "SERVICE_STUB_COST": str(cost_file), "SERVICE_MODELS": args.model,
           "SERVICE_WORKERS": str(workers), "SERVICE_LOG_LEVEL": "info"}
    result: dict = {"workers": workers, "settings": env, "runs": {}}
    with launch(env, log) as service:
        started = time.monotonic()
        service.wait_ready(600)
        result["start_s"] = time.monotonic() - started
        for kind, files in bodies.items():
            content_type, fmt = BODIES[kind]
            print(f"{workers} worker(s), {kind}", flush=True)
            result["runs"][kind] = drive(
                service.url, f"/v1/stylize?style={args.model}&format={fmt}", files, args.levels,
                duration_s=args.duration_s, warmup_s=args.warmup_s, min_done=args.min_done,
                max_s=args.max_level_s, rounds=args.rounds, content_type=content_type,
                server_pid=service.proc.pid)
    return result


def lower_in_every_round(a: dict, b: dict) -> bool:
    """Is level `a` slower than level `b` beyond this machine's noise: every round of `a`
    under every round of `b`? Rounds of one level here differ by up to a third (a shared
    2-core machine), so a lower pooled mean alone is a coin toss where the curve is flat;
    a front end that falls off (376 requests/s at 16 clients, 239 at 32) is lower in all."""
    return max(a["round_throughputs"]) < min(b["round_throughputs"])


def targets(result: dict) -> dict:
    """Issue 17's targets on this machine, on this run's numbers."""
    t: dict = {}
    by = {(r["workers"], kind): {row["concurrency"]: row for row in rows}
          for r in result["configs"] for kind, rows in r["runs"].items()}
    top, mid = max(result["levels"]), 16
    for (workers, kind), rows in sorted(by.items()):
        name = f"{kind}_{workers}w"
        ceiling = result["codec_ceiling"][kind]["images_per_s"]
        if top in rows:
            t[f"{name}_at_{top}_vs_codec_ceiling"] = rows[top]["throughput_per_s"] / ceiling
            t[f"{name}_server_cpu_ms_per_request_at_{top}"] = rows[top].get(
                "server_cpu_ms_per_request")
        if top in rows and mid in rows:
            t[f"{name}_{top}_vs_{mid}"] = (rows[top]["throughput_per_s"]
                                           / rows[mid]["throughput_per_s"])
            t[f"{name}_{top}_not_below_{mid}"] = not lower_in_every_round(rows[top], rows[mid])
    for kind in BODIES:
        one, two = by.get((1, kind), {}), by.get((2, kind), {})
        if top in one and top in two:
            t[f"{kind}_two_workers_vs_one_at_{top}"] = (two[top]["throughput_per_s"]
                                                        / one[top]["throughput_per_s"])
    best = max((w for w, _ in by), default=1)
    ratio = t.get(f"noise_png_{best}w_at_{top}_vs_codec_ceiling")
    if ratio is not None:
        t["codec_ceiling_0.9_met"] = ratio >= 0.9
    cpu = t.get(f"photo_jpeg_{best}w_server_cpu_ms_per_request_at_{top}")
    if cpu is not None:
        t["jpeg_cpu_3ms_met"] = cpu <= 3.0
    t["never_lower_at_64_than_16_met"] = all(v for k, v in t.items() if "_not_below_" in k)
    ratios = [v for k, v in t.items() if "_two_workers_vs_one_" in k]
    if ratios:
        t["two_workers_lose_nothing_met"] = min(ratios) >= 1.0
    t["errors_total"] = sum(row["errors_total"] for rows in by.values() for row in rows.values())
    return t


def plot(result: dict, out: Path) -> None:
    kinds = list(BODIES)
    with figure(out, result, "python -m bench service --device stub", ncols=len(kinds) + 1,
                figsize=(15, 4.6)) as axes:
        for ax, kind in zip(axes, kinds, strict=False):
            for config in result["configs"]:
                rows = config["runs"].get(kind, [])
                ax.plot([r["concurrency"] for r in rows], [r["throughput_per_s"] for r in rows],
                        marker="o", label=f"{config['workers']} worker(s)")
            ceiling = result["codec_ceiling"][kind]["images_per_s"]
            ax.axhline(ceiling, color="grey", ls=":", lw=1, label="codec-only ceiling")
            ax.axhline(0.9 * ceiling, color="grey", ls="--", lw=0.8, label="0.9 x that")
            ax.axhline(result["stub_ceiling"]["images_per_s"], color="red", ls=":", lw=1,
                       label="stub device ceiling")
            by_concurrency(ax, f"{kind}: requests/s", "requests/s", legend_size=7)
        ax = axes[-1]
        for config in result["configs"]:
            for kind, rows in config["runs"].items():
                ax.plot([r["concurrency"] for r in rows],
                        [r.get("server_cpu_ms_per_request") for r in rows], marker="o",
                        label=f"{kind}, {config['workers']} worker(s)")
        ax.axhline(3.0, color="grey", ls="--", lw=0.8, label="target (JPEG)")
        by_concurrency(ax, "server CPU per request", "ms", legend_size=7)


def main(args: argparse.Namespace) -> int:
    """Called by bench.service for --device stub, with its parsed arguments."""
    args.levels = [int(c) for c in (args.concurrency or "1,2,4,8,16,32,64").split(",")]
    args.max_batch_size = args.max_batch_size or 64
    out = Path(args.out or "bench/results/service-stub.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    curve = recorded_curve(Path(args.curve), args.curve_side)
    result: dict = {"benchmark": "service --device stub",
                    "command": "python -m bench service " + " ".join(sys.argv[2:]),
                    "machine": describe(),
                    "load_average_start": load_average(), "model": args.model,
                    "size": args.size, "levels": args.levels, "curve": curve,
                    "stub_ceiling": stub_ceiling(curve, args.max_batch_size)}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cost_file = Path(tmp) / "cost.json"
        cost_file.write_text(json.dumps(curve))
        count = 2 * max(args.levels) + 8
        bodies = {kind: make_bodies(kind, args.size, count, Path(tmp) / kind) for kind in BODIES}
        result["body_bytes"] = {kind: float(np.mean([p.stat().st_size for p in files]))
                                for kind, files in bodies.items()}
        result["codec_ceiling"] = {kind: codec_ceiling(files, BODIES[kind][1], args.codec_s)
                                   for kind, files in bodies.items()}
        print(json.dumps({"codec_ceiling": result["codec_ceiling"]}), flush=True)
        log = out.with_suffix(".log")
        log.unlink(missing_ok=True)
        result["configs"] = []
        for workers in (int(w) for w in args.workers.split(",")):
            result["configs"].append(run_workers(workers, cost_file, bodies, args, log))
            write_json(out, result)
    result.update(targets=targets(result), load_average_end=load_average(),
                  duration_s=round(time.monotonic() - started, 1))
    return finish(out, result, plot, json.dumps(result["targets"], indent=1))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of --device stub (bench.service adds them to its parser)."""
    g = p.add_argument_group("--device stub")
    g.add_argument("--curve", default=str(H200),
                   help="bench model results whose fastest path per batch the stub follows")
    g.add_argument("--curve-side", type=int, default=256,
                   help="the recorded size whose curve the stub follows (scaled by pixels)")
    g.add_argument("--workers", default="1,2", help="worker process counts to compare")
    g.add_argument("--codec-s", type=float, default=5.0,
                   help="seconds of the codec-only ceiling per body kind")
