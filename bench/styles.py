"""`python -m bench styles`: one multi-style network against separate per-style networks,
under mixed-style load.

Why: separate networks batch only the requests for one style, so with requests spread over six
styles a batch rarely holds more than one image; a multi-style network (conditional instance
norm, `nets/multistyle_net.py`) batches every style together (service/README.md, "Multi-style
network and blends"). The same closed-loop load runs against two configurations of the service
(a subprocess on 127.0.0.1, cache off):

- `per_style`: the per-style networks only (SERVICE_MODELS = the styles);
- `multistyle`: the multi-style network alone, serving every style
  (SERVICE_STYLE_BACKEND=multi);
- `blends` (not run by default): the same network, each request an even blend of two styles.

Load: `bench.load` in its own process, distinct images of one size (default 256), requests
cycling over the styles (`style=udnie`, `style=candy`, ...), at each concurrency. Each level:
throughput, p50/p95/p99, errors, and the forward passes and mean batch from /metrics. Writes
bench/results/styles-<device>.json and a PNG plot. `--quick`: tiny sizes and windows (a smoke
run, no meaningful numbers).

Paths: with the measured policy the per-style networks may run a faster exact path (on the CPU
`onnx_rewrite`), while the multi-style network runs eager only (its style weights are a second
input the rewrite and ONNX paths lack); the JSON records each model's policy.
`--batch-policy fixed` compares both on eager torch, batching alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from bench.machine import describe, load_average, wait_until_quiet
from bench.output import by_concurrency, figure, finish, write_json
from bench.server import PHOTOS, drive, load_settings, photo_pngs, serve

STYLES = "udnie,candy,mosaic,rain_princess,starry_night,the_wave"
QUICK = {"size": 32, "concurrency": "1,2", "duration_s": 0.3, "warmup_s": 0.2, "min_done": 2,
         "max_level_s": 10.0}


def configs(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Configuration name -> its SERVICE_* settings beyond the common ones."""
    multi = {"SERVICE_MODELS": args.multistyle, "SERVICE_STYLE_BACKEND": "multi"}
    return {"per_style": {"SERVICE_MODELS": ",".join(args.styles)}, "multistyle": multi,
            "blends": multi}


def requests(name: str, styles: list[str]) -> list[str]:
    """The paths requests cycle over: one style each, or (`blends`) an even blend of each
    style with the next, which only a multi-style network serves."""
    if name != "blends":
        return [f"/v1/stylize?style={s}" for s in styles]
    return [f"/v1/stylize?style={a}:0.5,{b}:0.5"
            for a, b in zip(styles, styles[1:] + styles[:1], strict=True)]


def missing_models(store: Path, names: list[str]) -> list[str]:
    from model_store import ModelStore

    present = set(ModelStore(store).names())
    return [n for n in names if n not in present]


def sweep(name: str, settings: dict[str, str], bodies: list[Path], levels: list[int],
          args: argparse.Namespace, log: Path) -> dict:
    """Start the service with `settings`, check it serves every style, drive each level."""
    env = {"SERVICE_MODEL_STORE": str(args.store), "SERVICE_BATCH_POLICY": args.batch_policy,
           **load_settings(args.device, args.max_batch_size, args.size, levels), **settings}
    started = time.monotonic()
    with serve(env, log) as url:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
        served = set().union(*({m["name"], *m.get("styles", [])} for m in models))
        absent = [s for s in args.styles if s not in served]
        if absent:
            raise RuntimeError(f"{name}: the service does not serve {absent}")
        result: dict = {"settings": env, "start_s": time.monotonic() - started,
                        "models": [{k: m.get(k) for k in ("name", "styles", "policy")}
                                   for m in models],
                        "load_average": load_average()}
        print(name, flush=True)
        result["runs"] = drive(url, requests(name, args.styles), bodies,
                               levels, duration_s=args.duration_s, warmup_s=args.warmup_s,
                               min_done=args.min_done, max_s=args.max_level_s)
    return result


def compare(result: dict) -> dict:
    """multistyle / per_style throughput and p99 at each concurrency both configurations ran."""
    runs = {name: {r["concurrency"]: r for r in s["runs"]}
            for name, s in result["sweeps"].items() if "runs" in s}
    if {"per_style", "multistyle"} - set(runs):
        return {}
    a, b = runs["per_style"], runs["multistyle"]
    out: dict = {}
    for c in sorted(set(a) & set(b)):
        ta, tb = a[c]["throughput_per_s"], b[c]["throughput_per_s"]
        out[str(c)] = {"throughput_ratio": tb / ta if ta else None,
                       "p99_ratio": (b[c]["p99_ms"] / a[c]["p99_ms"]
                                     if a[c]["p99_ms"] and b[c]["p99_ms"] else None),
                       "mean_batch": {"per_style": a[c]["mean_batch"],
                                      "multistyle": b[c]["mean_batch"]}}
    return out


def plot(result: dict, out: Path) -> None:
    heading = (f"python -m bench styles: {len(result['styles'])} styles cycling, "
               f"{result['size']}px,")
    with figure(out, result, heading, ncols=3, figsize=(15, 4.6)) as axes:
        for name, s in result["sweeps"].items():
            rows = s.get("runs", [])
            x = [r["concurrency"] for r in rows]
            for ax, key in zip(axes, ("throughput_per_s", "p99_ms", "mean_batch"), strict=True):
                ax.plot(x, [r[key] for r in rows], marker="o", label=name)
        for ax, title, unit in zip(axes, ("throughput", "p99 latency",
                                          "mean batch (forward pass)"),
                                   ("images/s", "ms", "images"), strict=True):
            by_concurrency(ax, title, unit, legend_size=8)


def main(argv: list[str] | None = None) -> int:
    from model_store import SHIPPED_ROOT

    p = argparse.ArgumentParser(prog="python -m bench styles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--store", default=str(SHIPPED_ROOT), help="model store folder")
    p.add_argument("--styles", default=STYLES, help="comma-separated; requests cycle over them")
    p.add_argument("--multistyle", default="multistyle", help="the multi-style model's name")
    p.add_argument("--configs", default="per_style,multistyle")
    p.add_argument("--size", type=int, default=256, help="image side")
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument("--max-batch-size", type=int, default=0,
                   help="batch cap (default 8 on the CPU, 64 on CUDA)")
    p.add_argument("--batch-policy", default="measure", choices=["measure", "fixed"])
    p.add_argument("--duration-s", type=float, default=8.0, help="window per level (at least)")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--min-done", type=int, default=24, help="answers per window (at least)")
    p.add_argument("--max-level-s", type=float, default=60.0)
    p.add_argument("--images", default=str(PHOTOS))
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="first wait (up to 20 min) for a 1-minute load average under this")
    p.add_argument("--quick", action="store_true",
                   help="defaults for a smoke run: 32 px, concurrency 1,2, short windows")
    p.add_argument("--out", default="")
    argv = sys.argv[1:] if argv is None else argv
    if "--quick" in argv:        # new defaults; options given explicitly still win
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    args.max_batch_size = args.max_batch_size or (64 if args.device == "cuda" else 8)
    args.styles = [s for s in args.styles.split(",") if s]
    args.store = Path(args.store)
    levels = [int(c) for c in args.concurrency.split(",")]
    out = Path(args.out or f"bench/results/styles-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    load_start = (wait_until_quiet(args.wait_quiet, 1200) if args.wait_quiet
                  else load_average())
    started = time.monotonic()
    result: dict = {"benchmark": "styles", "machine": describe(), "device": args.device,
                    "styles": args.styles, "size": args.size, "levels": levels,
                    "quick": args.quick, "load_average_start": load_start, "sweeps": {}}
    wanted = configs(args)
    log = out.with_suffix(".log")
    log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = photo_pngs(Path(args.images), [args.size], 2 * max(levels) + 8, Path(tmp))
        for name in args.configs.split(","):
            names = wanted[name]["SERVICE_MODELS"].split(",")
            absent = missing_models(args.store, names)
            if absent:
                result["sweeps"][name] = {"skipped": f"not in {args.store}: {absent}"}
                print(f"{name}: skipped, {absent} not in the store", flush=True)
                continue
            result["sweeps"][name] = sweep(name, wanted[name], bodies, levels, args, log)
            write_json(out, result)
    result.update(comparison=compare(result), load_average_end=load_average(),
                  duration_s=round(time.monotonic() - started, 1))
    return finish(out, result, plot, json.dumps(result["comparison"], indent=1))
