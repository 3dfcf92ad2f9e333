"""The faults section: Redis killed and restarted, a forward that raises, clients leaving in
bulk, SIGTERM under load; each guarded, so that one failing does not stop the others."""

from __future__ import annotations

import asyncio
import json
import math
import random
import signal
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench import hostile
from bench.reliability.client import PNG, Client, Inputs, Reply, closed_loop
from bench.reliability.process import STYLE, RssSampler, service
from bench.reliability.raising_model import fault_raising_model
from bench.reliability.stats import mib
from bench.server import free_port, redis_on


async def fault_redis(log_dir: Path, quick: bool) -> dict[str, Any]:
    """Redis SIGKILLed at 1/4 of the run and started again at 1/2, under closed-loop load."""
    duration = 12.0 if quick else 40.0
    port = free_port()
    inputs = Inputs(64, pool=16)
    target = f"/v1/stylize?style={STYLE}"
    timeline: list[tuple[float, int | None, str]] = []
    events: dict[str, float] = {}
    with redis_on(port) as first, service(
            {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "SERVICE_REDIS_TIMEOUT_S": "0.25"},
            log_dir, "fault-redis") as svc:
        await svc.ready()
        client = Client(svc.port)
        t0 = time.monotonic()

        async def one(i: int) -> Reply:
            body = inputs.repeated(i) if i % 2 else inputs.unique()
            reply = await client.request("POST", target, body, PNG)
            timeline.append((time.monotonic() - t0, reply.status, reply.headers.get("x-cache",
                                                                                    "")))
            return reply

        async def chaos() -> None:
            await asyncio.sleep(duration / 4)
            first.kill()
            first.wait()
            events["killed_s"] = time.monotonic() - t0
            await asyncio.sleep(duration / 4)
            with redis_on(port) as second:
                events["restarted_s"] = time.monotonic() - t0
                await asyncio.sleep(duration / 2 + 5)
                second.kill()

        chaos_task = asyncio.create_task(chaos())
        replies = await closed_loop(8, duration, one)
        client.close()
        m = await svc.metrics()
        chaos_task.cancel()
        with suppress(asyncio.CancelledError):
            await chaos_task
    restarted = events.get("restarted_s", math.inf)
    killed = events.get("killed_s", math.inf)
    first_hit = min((t for t, s, c in timeline if t > restarted and c == "hit" and s == 200),
                    default=None)
    per_phase = {}
    for phase, lo, hi in (("before", 0, killed), ("redis down", killed, restarted),
                          ("after restart", restarted, math.inf)):
        rows = [(s, c) for t, s, c in timeline if lo <= t < hi]
        per_phase[phase] = {"requests": len(rows), "ok": sum(s == 200 for s, _ in rows),
                            "hits": sum(c == "hit" for _, c in rows)}
    return {
        "duration_s": duration, "requests": len(replies),
        "failed": sum(r.status != 200 for r in replies),
        "statuses": dict(Counter(r.status for r in replies)),
        "killed_at_s": round(killed, 2), "restarted_at_s": round(restarted, 2),
        "first_hit_after_restart_s": None if first_hit is None
        else round(first_hit - restarted, 2),
        "cache_errors": int(m.get('service_cache_errors_total{backend="redis"}', 0)),
        "phases": per_phase,
    }


async def fault_disconnects(log_dir: Path, quick: bool) -> dict[str, Any]:
    """Hundreds of clients leave mid-upload or while queued, beside clients that stay."""
    n = 100 if quick else 300
    rng = random.Random(1)
    big = [hostile.png(256, 256, seed=i) for i in range(8)]
    with service({}, log_dir, "fault-disconnects") as svc:
        await svc.ready()
        rss_before = svc.rss()
        target = f"/v1/stylize?style={STYLE}"

        answered_first = 0

        async def leaver(i: int) -> None:
            """Sends all or half of a request, leaves after 0.05-2 s unless answered first."""
            nonlocal answered_first
            body = big[i % len(big)] + hostile.chunk(b"tEXt", b"n\x00" + str(i).encode())
            sent = body[: len(body) // 2] if i % 2 else body
            with suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
                writer.write(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + sent)
                await writer.drain()
                with suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), rng.uniform(0.05, 2.0)):
                        answered_first += 1
                writer.transport.abort()

        stayer_client = Client(svc.port)
        inputs = Inputs(64)

        retries = 0

        async def stayers() -> list[Reply]:
            """20 requests from a client that stays, and retries after a 429's Retry-After."""
            nonlocal retries
            replies = []
            for _ in range(20):
                for _attempt in range(30):
                    reply = await stayer_client.request("POST", target, inputs.unique(), PNG)
                    if reply.status != 429:
                        break
                    retries += 1
                    await asyncio.sleep(float(reply.headers.get("retry-after", "1")))
                replies.append(reply)
            return replies

        with RssSampler(svc) as sampler:
            leaving = asyncio.gather(*(leaver(i) for i in range(n)))   # alongside the stayer
            stayed = await stayers()
            await leaving
            drained_s = await svc.idle()
        stayer_client.close()
        m = await svc.metrics()
        after = await Client(svc.port).request("POST", target, inputs.unique(), PNG)
        rss_after = svc.rss()
    return {
        "clients_leaving": n, "mid_upload": n // 2, "after_upload": n - n // 2,
        "answered_before_leaving": answered_first,
        "disconnects_counted": int(m.get('service_rejections_total{reason="client_disconnected"}',
                                         0)),
        "queue_depth_after": sum(v for k, v in m.items() if k.startswith("service_queue_depth")),
        "inflight_after": m.get("service_inflight_requests"),
        "seconds_to_idle": round(drained_s, 2),
        "staying_clients_ok": sum(r.status == 200 for r in stayed), "staying_clients": len(stayed),
        "staying_retries_after_429": retries,
        "forward_passes": int(sum(v for k, v in m.items()
                                  if k.startswith("service_batch_size_count"))),
        "after_status": after.status,
        "rss_before_mib": mib(rss_before), "rss_peak_mib": mib(sampler.peak),
        "rss_after_mib": mib(rss_after),
    }


async def fault_sigterm(log_dir: Path, quick: bool) -> dict[str, Any]:
    """SIGTERM after a few seconds of closed-loop load; clients stop at their first refusal."""
    inputs = Inputs(64)
    with service({"SERVICE_DRAIN_TIMEOUT_S": "30"}, log_dir, "fault-sigterm") as svc:
        await svc.ready()
        target = f"/v1/stylize?style={STYLE}"
        replies: list[Reply] = []
        signalled = asyncio.Event()

        async def loop() -> None:
            client = Client(svc.port)
            while True:
                reply = await client.request("POST", target, inputs.unique(), PNG)
                replies.append(reply)
                if signalled.is_set() and reply.status != 200:
                    break                      # 503 or no connection: go elsewhere
            client.close()

        loops = [asyncio.create_task(loop()) for _ in range(16)]
        await asyncio.sleep(2 if quick else 5)
        sent_before = len(replies)
        svc.proc.send_signal(signal.SIGTERM)
        signalled.set()
        await asyncio.wait_for(asyncio.gather(*loops), 120)
        code = await asyncio.to_thread(svc.proc.wait, 120)
        log = svc.log_lines()
    logged = Counter(e.get("status") for e in log if e.get("logger") == "service.access"
                     and e.get("path", "").startswith("/v1/"))
    client_side = Counter(r.status if r.status is not None else r.error for r in replies)
    return {
        "exit_code": code, "requests_before_signal": sent_before,
        "client_outcomes": {str(k): v for k, v in client_side.items()},
        "server_logged": {str(k): v for k, v in logged.items()},
        "admitted_and_completed": logged.get(200, 0),
        "every_admitted_completed": logged.get(200, 0) == client_side.get(200, 0)
        and set(logged) <= {200, 503},
        "drain_logged": any("draining" in str(e.get("message")) for e in log),
    }


async def run_faults(log_dir: Path, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, run in (("redis", lambda: fault_redis(log_dir, quick)),
                      ("raising_model", lambda: fault_raising_model(quick)),
                      ("disconnects", lambda: fault_disconnects(log_dir, quick)),
                      ("sigterm", lambda: fault_sigterm(log_dir, quick))):
        print(f"  fault: {name}", flush=True)
        out[name] = await guarded(run)
        print(f"    {json.dumps(out[name])[:400]}", flush=True)
    return out


async def guarded(run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """A section's result, or the error that stopped it (the other sections still run)."""
    try:
        return await run()
    except Exception:
        return {"error": traceback.format_exc(limit=8)}
