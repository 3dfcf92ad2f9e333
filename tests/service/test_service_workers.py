"""Several worker processes on one port (service/workers.py), as `python -m service` runs them:
real processes, a real socket, the stub device (service/stub.py) in place of the forward pass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.server import free_port
from service.settings import Settings
from tests.helpers import images

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cost_file(tmp_path: Path) -> Path:
    path = tmp_path / "cost.json"
    path.write_text(json.dumps({"side": 256, "batch_ms": {"1": 1.0, "8": 4.0}}))
    return path


class Workers:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()
                if line.startswith("{")]

    def children(self) -> set[int]:
        """The supervisor's child processes (the workers, and multiprocessing's tracker)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return {int(pid) for pid in children.split()}


@pytest.fixture
def workers(store_root: Path, cost_file: Path, tmp_path: Path) -> Iterator[Workers]:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SERVICE_") and k != "REDIS_URL"}
    env.update(SERVICE_MODEL_STORE=str(store_root), SERVICE_MODELS="udnie",
               SERVICE_DEVICE="stub", SERVICE_STUB_COST=str(cost_file),
               SERVICE_WORKERS="2", SERVICE_HOST="127.0.0.1", SERVICE_PORT=str(port),
               SERVICE_DRAIN_TIMEOUT_S="20")
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    running = Workers(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 120
        while len(_ready_pids(running)) < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the workers were not ready in 120 s"
            time.sleep(0.2)
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _alive(running):
            os.kill(pid, signal.SIGKILL)


def _ready_pids(w: Workers) -> set[int]:
    return {e["pid"] for e in w.lines() if e["message"].startswith("ready:")}


def _alive(w: Workers) -> set[int]:
    return {pid for pid in _ready_pids(w) if Path(f"/proc/{pid}").exists()
            and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]}


def test_two_workers_share_the_port_and_the_metrics(workers: Workers) -> None:
    pids = _ready_pids(workers)
    assert len(pids) == 2 and pids <= workers.children()
    n = 24

    def post(i: int) -> httpx.Response:   # a new connection each, 8 at once: both accept
        return httpx.post(f"{workers.url}/v1/stylize?style=udnie",
                          content=images.png(32, 32, i),
                          headers={"content-type": "image/png"}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(n)))
    assert [r.status_code for r in answers] == [200] * n
    assert all(images.decode(r.content).size == (32, 32) for r in answers)
    served = {e["pid"] for e in workers.lines() if e.get("path") == "/v1/stylize"}
    assert served == pids                    # both answered
    text = httpx.get(f"{workers.url}/metrics", timeout=10).text
    batched = sum(s.value for f in text_string_to_metric_families(text)
                  for s in f.samples if s.name == "service_batch_size_sum")
    assert batched == n                      # every worker's batches, whichever answers


def test_sigterm_drains_every_worker_and_exits_0(workers: Workers) -> None:
    pids = _ready_pids(workers)
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(60) == 0
    assert not _alive(workers)
    draining = {e["pid"] for e in workers.lines() if "draining" in e["message"]}
    assert draining == pids


def test_a_worker_that_dies_stops_the_others_and_the_supervisor_exits_1(
        workers: Workers) -> None:
    victim, other = sorted(_ready_pids(workers))
    os.kill(victim, signal.SIGKILL)
    assert workers.proc.wait(60) == 1
    assert other not in _alive(workers)
    assert any("exited on its own" in e["message"] for e in workers.lines())


def test_a_rate_limit_over_several_workers_needs_redis() -> None:
    with pytest.raises(ValueError, match="needs redis_url"):
        Settings(workers=2, rate_limit_per_s=5)
    assert Settings(workers=2, rate_limit_per_s=5, redis_url="redis://x:6379").workers == 2
    assert Settings(workers=1, rate_limit_per_s=5).rate_limit_per_s == 5
