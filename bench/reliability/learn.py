"""The learn section: a new style learned over HTTP (POST /v1/styles) while closed-loop clients
stylise with a shipped style: how long until the new style serves, whether the gate passed,
and the other requests' errors and p99 before and during.

The service runs on a copy of the shipped store (the shipped one is never written) with the
default learning settings (128-px crops, 8 minutes of training, so that with the loss network's
start, the weight calibration and the reload it serves within 10), the paintings and photos of
the shared data folder.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench.reliability.client import PNG, Client, Inputs, Timed, get, timed_client, window
from bench.reliability.process import STYLE, service
from model_store import SHIPPED_ROOT, data_root

PAINTING = "the_scream"      # one of the paintings no shipped model covers
CLIENTS = 4
TARGET_S = 600               # the target on this CPU: learned within 10 minutes


async def run_learn(log_dir: Path, quick: bool) -> dict[str, Any]:
    painting = (data_root() / "styles" / f"{PAINTING}.jpg").read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-learn-store-") as tmp:
        for name in (STYLE, "multistyle"):
            shutil.copytree(SHIPPED_ROOT / name, Path(tmp) / name)
        env = {"SERVICE_MODEL_STORE": tmp, "SERVICE_MODELS": f"{STYLE},multistyle",
               **({"SERVICE_LEARN_TIME_LIMIT_S": "60"} if quick else {})}
        with service(env, log_dir, "learn") as svc:
            await svc.ready()
            inputs, target = Inputs(64), f"/v1/stylize?style={STYLE}"
            done: list[Timed] = []
            stop = asyncio.Event()
            loops = [asyncio.create_task(timed_client(svc.port, target, inputs, done, stop))
                     for _ in range(CLIENTS)]
            await asyncio.sleep(5 if quick else 20)
            control = Client(svc.port)
            submitted_at = time.monotonic()
            reply = await control.request("POST", f"/v1/styles?name={PAINTING}", painting,
                                          {"Content-Type": "image/jpeg"})
            status = json.loads(reply.body)
            while status.get("state") in ("queued", "running"):
                await asyncio.sleep(2)
                with suppress(OSError, TimeoutError):   # a busy server: ask again
                    code, _, body = await get(svc.port, status["url"])   # a connection each
                    if code == 200:
                        status = json.loads(body)
            served = await control.request("POST", f"/v1/stylize?style={PAINTING}",
                                           inputs.unique(), PNG)
            serving_after_s = time.monotonic() - submitted_at
            stop.set()
            await asyncio.gather(*loops)
            control.close()
    windows = {"before": [d for d in done if d[0] < submitted_at],
               "during": [d for d in done if d[0] >= submitted_at]}
    out: dict[str, Any] = {
        "painting": PAINTING, "clients": CLIENTS, "submit_status": reply.status,
        "state": status.get("state"), "job_error": status.get("error"),
        "steps": status.get("progress", {}).get("done"),
        "training_s": (status.get("detail") or {}).get("seconds"),
        "serving_after_s": round(serving_after_s, 1), "served_status": served.status,
        "within_target": served.status == 200 and serving_after_s <= TARGET_S}
    for name, rows in windows.items():
        out[name] = window(rows)
    out["others_failed"] = out["before"]["errors"] + out["during"]["errors"]
    return out
