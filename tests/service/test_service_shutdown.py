"""SIGTERM drain of the real process: `python -m service` finishes in-flight requests, exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from bench.server import free_port
from tests.helpers import images
from tests.helpers.server import until

ROOT = Path(__file__).resolve().parents[2]


async def test_sigterm_drains_in_flight_requests_and_exits_0(store_root: Path,
                                                             tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SERVICE_") and k != "REDIS_URL"}
    env.update(SERVICE_MODEL_STORE=str(store_root), SERVICE_DEVICE="cpu",
               SERVICE_TORCH_THREADS="1", SERVICE_MODELS="udnie",
               # Requests wait for a full batch for a minute: they are surely still queued
               # when SIGTERM arrives, and only the drain's flush can finish them in time.
               SERVICE_MAX_WAIT_MS="60000", SERVICE_MAX_BATCH_SIZE="64",
               SERVICE_BATCH_POLICY="fixed",   # batches of up to 64 (not measured ones)
               SERVICE_REQUEST_TIMEOUT_S="120", SERVICE_DRAIN_TIMEOUT_S="30",
               SERVICE_PORT="1")  # the --port flag must win over the environment
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)

    async def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return (await client.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def three_queued() -> bool:
        text = (await client.get("/metrics")).text
        return 'service_queue_depth{model="udnie"} 3.0' in text

    try:
        await until(ready, timeout_s=120, what="the service to be ready")
        requests = [asyncio.create_task(client.post(
            "/v1/stylize?style=udnie", content=images.png(24, 24, seed=i),
            headers={"content-type": "image/png", "x-request-id": f"drain-{i}"}))
            for i in range(3)]
        await until(three_queued, timeout_s=30, what="3 queued requests")
        proc.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert all(images.decode(r.content).size == (24, 24) for r in responses)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        await client.aclose()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(e.get("request_id") == "drain-0" and e.get("status") == 200 for e in lines)
    assert any("draining" in e["message"] for e in lines)


def test_a_model_that_cannot_load_makes_the_process_exit_1(store_root: Path,
                                                           tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SERVICE_") and k != "REDIS_URL"}
    env.update(SERVICE_MODEL_STORE=str(store_root), SERVICE_DEVICE="cpu",
               SERVICE_MODELS="udnie,no-such-model", SERVICE_TORCH_THREADS="1",
               SERVICE_BATCH_POLICY="fixed")
    proc = subprocess.run([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port",
                           str(free_port())], cwd=ROOT, env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == 1
    assert b"no-such-model" in proc.stderr
