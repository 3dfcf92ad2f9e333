"""The oversized section: the biggest work the service's default limits let through, sent as
requests and as a job, with the server's answer time and its peak RSS over its idle peak.

The other sections run with this benchmark's smaller LIMITS; this one with the service's own
defaults (16 Mpx in, 64 Mpx out, 20 MiB bodies), where one request could once take a 1024x1024
image to 8192x8192 for minutes and several GiB. Each request must be answered at once when it
cannot finish in time (413 too_slow), and whatever runs must stay within the memory budget: the
server's peak RSS at most 1 GiB over its idle peak (VmHWM, reset before every case).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import hostile
from bench.reliability.client import PNG, Client
from bench.reliability.process import STYLE, Service, service
from bench.reliability.stats import MiB, mib

MAX_OVER_IDLE_MIB = 1024
DEFAULTS = {"SERVICE_MAX_BODY_BYTES": str(20 * MiB), "SERVICE_MAX_PIXELS": str(4096 * 4096),
            "SERVICE_MAX_OUTPUT_PIXELS": str(8192 * 8192), "SERVICE_BODY_TIMEOUT_S": "30",
            "SERVICE_HEADER_TIMEOUT_S": "10"}
# (name, target, input side): within the default limits, each the largest of its kind
CASES = [("superres-1024-x8", "/v1/superres?factor=8", 1024),
         ("superres-2048-x4", "/v1/superres?factor=4", 2048),
         ("style-4096", f"/v1/stylize?style={STYLE}", 4096),
         ("style-2048", f"/v1/stylize?style={STYLE}", 2048)]
JOB = ("superres-1024-x8", "/v1/jobs/superres?factor=8", 1024)
JPEG = {"Content-Type": "image/jpeg"}


async def run_oversized(log_dir: Path, quick: bool, job_timeout_s: float = 900
                        ) -> dict[str, Any]:
    env = {**DEFAULTS, "SERVICE_MODELS": f"{STYLE},sr_x4,sr_x8",
           "SERVICE_JOB_TIMEOUT_S": str(job_timeout_s)}
    rows: list[dict[str, Any]] = []
    with service(env, log_dir, "oversized") as svc:
        await svc.ready()
        client = Client(svc.port)
        await client.request("POST", f"/v1/stylize?style={STYLE}", hostile.png(64, 64), PNG)
        idle_peak = svc.status()["VmHWM"]
        for name, target, side in CASES:
            body = photo(side)
            svc.reset_peak()
            reply = await client.request("POST", target, body, JPEG, timeout_s=600)
            rows.append(_row(name, target, side, reply.status, reply.seconds, svc,
                             _code(reply.body) if reply.status != 200 else None, idle_peak))
        if not quick:
            rows.append(await _job(svc, client, idle_peak))
        client.close()
    worst = max(r["peak_over_idle_mib"] for r in rows)
    return {"idle_peak_rss_mib": mib(idle_peak), "rows": rows,
            "peak_over_idle_max_mib": worst, "max_over_idle_mib": MAX_OVER_IDLE_MIB,
            "within_budget": worst <= MAX_OVER_IDLE_MIB,
            "no_5xx": all(r["status"] is not None and r["status"] < 500 for r in rows)}


async def _job(svc: Service, client: Client, idle_peak: int) -> dict[str, Any]:
    """The job's round trip: submitted, polled every half second, its result fetched."""
    name, target, side = JOB
    svc.reset_peak()
    started = time.monotonic()
    reply = await client.request("POST", target, photo(side), JPEG)
    if reply.status != 202:
        return _row(f"job-{name}", target, side, reply.status, reply.seconds, svc,
                    _code(reply.body), idle_peak)
    url = json.loads(reply.body)["url"]
    while True:
        status = json.loads((await client.request("GET", url)).body)
        if status["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.5)
    result = await client.request("GET", url + "/result", timeout_s=120)
    row = _row(f"job-{name}", target, side, result.status, time.monotonic() - started, svc,
               None if status["state"] == "done" else status["error"]["code"], idle_peak)
    row.update(progress=status["progress"], result_bytes=len(result.body))
    return row


def photo(side: int, seed: int = 0) -> bytes:
    """A JPEG of smooth colour with noise, as a photograph compresses: the default body limit
    (20 MiB) holds one of 4096x4096, which a PNG of random pixels would not."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC)
    noisy = np.asarray(im, np.int16) + rng.integers(-8, 9, (side, side, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _row(name: str, target: str, side: int, status: int | None, seconds: float, svc: Service,
         code: str | None, idle_peak: int) -> dict[str, Any]:
    peak = svc.status()["VmHWM"]
    row = {"name": name, "target": target, "input": f"{side}x{side}", "status": status,
           "code": code, "seconds": round(seconds, 2), "peak_rss_mib": mib(peak),
           "peak_over_idle_mib": mib(max(0, peak - idle_peak))}
    print(f"  {name:22s} {status} {code or '':12s} {seconds:7.2f} s  peak "
          f"{row['peak_rss_mib']} MiB (+{row['peak_over_idle_mib']})", flush=True)
    return row


def _code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
