"""The swap section: a model replaced while serving under closed-loop load
(POST /admin/models/reload), and the requests, errors and p99 latency before, during and after.

The new version is the shipped network (stored in float16) saved again in float32: other bytes
(another digest), the same behaviour, so the reload loads, measures, checks and swaps it as it
would a retrained model. Every request's input is new, so none is answered from the cache.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.reliability.client import Client, Inputs, Timed, timed_client, window
from bench.reliability.process import SR_MODEL, STYLE, service
from model_store import SHIPPED_ROOT, ModelStore

CLIENTS = 8
P99_WITHIN = 2.0     # the claim: p99 during the swap at most twice that before


async def run_swap(log_dir: Path, quick: bool) -> dict[str, Any]:
    settle_s = 5.0 if quick else 20.0
    with tempfile.TemporaryDirectory(prefix="bench-swap-store-") as tmp:
        store = ModelStore(Path(tmp))
        for name in (STYLE, SR_MODEL):
            shutil.copytree(SHIPPED_ROOT / name, store.root / name)
        env = {"SERVICE_MODEL_STORE": tmp, "SERVICE_ADMIN_API_KEY": ""}
        with service(env, log_dir, "swap") as svc:
            await svc.ready()
            inputs, target = Inputs(64), f"/v1/stylize?style={STYLE}"
            done: list[Timed] = []
            stop = asyncio.Event()
            loops = [asyncio.create_task(timed_client(svc.port, target, inputs, done, stop))
                     for _ in range(CLIENTS)]
            await asyncio.sleep(settle_s)
            old = store.manifest(STYLE).sha256
            net, manifest = store.load(STYLE)
            await asyncio.to_thread(
                store.save, net, name=STYLE, task=manifest.task,
                architecture=manifest.architecture, options=manifest.options,
                dtype=torch.float32, training=manifest.training, metrics=manifest.metrics,
                iterations=manifest.iterations, loss_network=manifest.loss_network)
            swap_start = time.monotonic()
            reload = await Client(svc.port).request("POST", "/admin/models/reload", b"",
                                                    timeout_s=300)
            swap_end = time.monotonic()
            await asyncio.sleep(settle_s)
            stop.set()
            await asyncio.gather(*loops)
            models = await Client(svc.port).request("GET", "/v1/models")
        new = store.manifest(STYLE).sha256
    windows = {"before": [d for d in done if d[0] < swap_start],
               "during": [d for d in done if swap_start <= d[0] < swap_end],
               "after": [d for d in done if d[0] >= swap_end]}
    out: dict[str, Any] = {"clients": CLIENTS, "reload_status": reload.status,
                           "reload_answer": reload.body.decode(errors="replace")[:500],
                           "reload_s": round(swap_end - swap_start, 2),
                           "serving_new_digest": new != old and new in models.body.decode()}
    for name, rows in windows.items():
        out[name] = window(rows)
    before, during = out["before"]["p99_ms"], out["during"]["p99_ms"]
    out["p99_ratio"] = round(during / before, 2) if before and during else None
    out["lost"] = sum(w["errors"] for w in (out["before"], out["during"], out["after"]))
    out["p99_within"] = out["p99_ratio"] is not None and out["p99_ratio"] <= P99_WITHIN
    return out
