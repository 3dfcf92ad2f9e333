"""`python -m bench cache`: the cache hit path, in-process LRU and Redis, for a 512x512 result.

Two levels, each for both backends:
- the cache alone (`service.cache`): latency of a hit, one at a time, and hits per second with
  1 and 8 concurrent readers;
- the service's hit path over HTTP: the same image posted again and again (the first answer is
  computed, every later one is a hit), driven by `bench.load` from another process; this adds
  reading the body, hashing it, and the HTTP round trip.
Redis is the one at --redis-url (127.0.0.1:6379 by default); skipped if it does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench.load import percentiles
from bench.machine import describe, load_average, wait_until_quiet
from bench.output import figure, finish
from bench.server import PHOTOS, drive, photo_pngs, serve
from service.cache import Cache, MemoryCache, RedisCache, cache_key
from service.lifecycle import connect_redis
from service.metrics import Metrics

MiB = 1024 * 1024


async def cache_level(cache, value: bytes, gets: int, seconds: float) -> dict:  # noqa: ANN001
    key = cache_key("bench", "bench", {"pid": os.getpid(), "n": len(value)})
    await cache.set(key, value)
    assert await cache.get(key) == value, "the value did not come back"
    lat = []
    for _ in range(gets):
        t0 = time.perf_counter()
        await cache.get(key)
        lat.append(time.perf_counter() - t0)
    out: dict = {"value_bytes": len(value), "gets": gets, **percentiles(lat)}
    async def reader(end: float) -> int:
        n = 0
        while time.perf_counter() < end:
            await cache.get(key)
            n += 1
        return n

    for readers in (1, 8):
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(reader(t0 + seconds) for _ in range(readers)))
        rate = sum(counts) / (time.perf_counter() - t0)
        out[f"hits_per_s_{readers}_readers"] = rate
        out[f"mib_per_s_{readers}_readers"] = rate * len(value) / MiB
    return out


def stylized_png(body: Path, model: str) -> bytes:
    """What the cache holds for `body`: the model's output, encoded as the service does."""
    from PIL import Image

    from model_store import SHIPPED_ROOT
    from service import imaging
    from service.registry import Registry

    (m,) = Registry(SHIPPED_ROOT, [model], "cpu").load_all()
    (out,) = m.run([np.asarray(Image.open(body).convert("RGB"))])
    return imaging.encode(out, None, "png", 90)


def redis_answers(url: str) -> bool:
    import redis
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except Exception:
        return False


def http_level(settings: dict[str, str], body: Path, args: argparse.Namespace, log: Path
               ) -> dict:
    env = {"SERVICE_MODELS": args.model, "SERVICE_BATCH_POLICY": "fixed", **settings}
    with serve(env, log) as url:
        first = httpx.post(f"{url}/v1/stylize?style={args.model}", content=body.read_bytes(),
                           headers={"content-type": "image/png"}, timeout=300)
        first.raise_for_status()
        again = httpx.post(f"{url}/v1/stylize?style={args.model}", content=body.read_bytes(),
                           headers={"content-type": "image/png"}, timeout=300)
        assert again.headers.get("x-cache") == "hit", again.headers
        rows = drive(url, f"/v1/stylize?style={args.model}", [body], [1, 8],
                     duration_s=args.seconds, warmup_s=0.5, min_done=50, max_s=30)
    return {"result_bytes": len(first.content), "levels": rows}


def plot(result: dict, out: Path) -> None:
    names, p50, p99 = [], [], []
    for backend, r in result["cache"].items():
        if "p50_ms" in r:
            names.append(f"{backend} get")
            p50.append(r["p50_ms"])
            p99.append(r["p99_ms"])
    for backend, r in result["http"].items():
        if "levels" in r:
            names.append(f"{backend} HTTP hit")
            p50.append(r["levels"][0]["p50_ms"])
            p99.append(r["levels"][0]["p99_ms"])
    with figure(out, result, figsize=(7, 4)) as ax:
        x = np.arange(len(names))
        ax.bar(x - 0.2, p50, 0.4, label="p50")
        ax.bar(x + 0.2, p99, 0.4, label="p99")
        ax.axhline(3, color="grey", ls=":", lw=0.8)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylabel("ms")
        ax.set_title(f"cache hit of a {result['value_side']}x{result['value_side']} PNG "
                     f"({result['value_bytes'] // 1024} KiB), one at a time", fontsize=9)
        ax.legend()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=512, help="side of the cached result")
    p.add_argument("--gets", type=int, default=2000, help="timed hits, one at a time")
    p.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--model", default="udnie")
    p.add_argument("--http", action=argparse.BooleanOptionalAction, default=True,
                   help="also the service's hit path over HTTP")
    p.add_argument("--images", default=str(PHOTOS))
    p.add_argument("--wait-quiet", type=float, default=0.0)
    p.add_argument("--out", default="bench/results/cache.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_start = (wait_until_quiet(args.wait_quiet, 1200) if args.wait_quiet
                  else load_average())
    with tempfile.TemporaryDirectory() as tmp:
        (body,) = photo_pngs(Path(args.images), [args.side], 1, Path(tmp))
        value = stylized_png(body, args.model)
        result: dict = {"benchmark": "cache", "machine": describe(),
                        "load_average_start": load_start, "value_side": args.side,
                        "value_bytes": len(value), "cache": {}, "http": {}}
        redis_ok = redis_answers(args.redis_url)
        prefix = f"pst-bench:{os.getpid()}:"
        caches: dict[str, Callable[[], Cache]] = {
            "memory": lambda: MemoryCache(256 * MiB, 64 * MiB, Metrics())}
        if redis_ok:
            caches["redis"] = lambda: RedisCache(connect_redis(args.redis_url, 1.0), ttl_s=600,
                                                 max_value_bytes=64 * MiB, timeout_s=1.0,
                                                 prefix=prefix, metrics=Metrics())
        else:
            result["cache"]["redis"] = result["http"]["redis"] = {
                "skipped": f"no Redis answers at {args.redis_url}"}

        async def levels() -> None:
            for name, make in caches.items():
                cache = make()
                try:
                    result["cache"][name] = await cache_level(cache, value, args.gets,
                                                              args.seconds)
                finally:
                    await cache.close()
                    if isinstance(cache, RedisCache):
                        await cache.redis.aclose()   # the client is not the cache's to close
                print(json.dumps({name: result["cache"][name]}), flush=True)

        asyncio.run(levels())
        if args.http:
            log = out.with_suffix(".log")
            log.unlink(missing_ok=True)
            http = {"memory": {"SERVICE_CACHE_BYTES": str(256 * MiB)}}
            if redis_ok:
                http["redis"] = {"SERVICE_REDIS_URL": args.redis_url,
                                 "SERVICE_REDIS_KEY_PREFIX": prefix,
                                 "SERVICE_REDIS_TIMEOUT_S": "1"}
            for name, settings in http.items():
                result["http"][name] = http_level(settings, body, args, log)
                print(json.dumps({f"http {name}": result["http"][name]}), flush=True)
    redis_p50 = result["cache"].get("redis", {}).get("p50_ms")
    result["targets"] = {"redis_hit_p50_ms": redis_p50,
                         "redis_hit_p50_under_3ms_met": None if redis_p50 is None
                         else redis_p50 < 3.0}
    result["load_average_end"] = load_average()
    return finish(out, result, plot, json.dumps(result["targets"]))


