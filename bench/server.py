"""Start `python -m service` (and a redis-server beside it) on 127.0.0.1 for a benchmark, and
drive it with `bench.load`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from model_store import data_root

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = data_root() / "photos"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_settings(device: str, max_batch_size: int, max_side: int, levels: list[int]
                  ) -> dict[str, str]:
    """SERVICE_* settings for a closed-loop sweep: no cache, batches of `max_batch_size` images
    of up to `max_side` allowed, a queue and in-flight limit no level reaches, no timeouts."""
    return {"SERVICE_CACHE_BYTES": "0", "SERVICE_DEVICE": device,
            "SERVICE_MAX_BATCH_SIZE": str(max_batch_size),
            "SERVICE_MAX_BATCH_PIXELS": str(max(max_batch_size * max_side ** 2, 4 * 512 * 512)),
            "SERVICE_QUEUE_LIMIT": str(4 * max(levels)),
            "SERVICE_MAX_INFLIGHT": str(8 * max(levels)), "SERVICE_REQUEST_TIMEOUT_S": "300"}


@dataclass
class Launched:
    """A `python -m service` child process: where it listens and where its output goes."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def wait_ready(self, timeout_s: float) -> None:
        """Poll /readyz until it says ready; an error if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the service exited ({self.proc.returncode}); the end of "
                                   f"{self.log_path}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service was not ready in {timeout_s}s")
            time.sleep(0.2)


@contextlib.contextmanager
def launch(settings: dict[str, str], log_path: Path, repo: Path = ROOT) -> Iterator[Launched]:
    """The service of the checkout `repo` in a subprocess on 127.0.0.1:<free port> with SERVICE_*
    `settings` (none, nor REDIS_URL, inherited from the calling shell; other variables are
    added), its output appended to `log_path`; not waited for (see `Launched.wait_ready`);
    SIGTERM at the end, SIGKILL 60 s later."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SERVICE_") and k != "REDIS_URL"}
    env.update({"SERVICE_HOST": "127.0.0.1", "SERVICE_PORT": str(port),
                "SERVICE_LOG_LEVEL": "warning", **settings})
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=repo, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Launched(f"http://127.0.0.1:{port}", port, proc, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def serve(settings: dict[str, str], log_path: Path, ready_timeout_s: float = 900
          ) -> Iterator[str]:
    """`launch`, then its base URL once /readyz says ready."""
    with launch(settings, log_path) as service:
        service.wait_ready(ready_timeout_s)
        yield service.url


def redis_answers(host: str, port: int) -> bool:
    """Whether a Redis at `host`:`port` answers PING."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_on(port: int, ready_timeout_s: float = 10) -> Iterator[subprocess.Popen[bytes]]:
    """redis-server on 127.0.0.1:`port` (a given port, so that it can come back on the same
    one), no persistence; yields the process once it answers, SIGKILL at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not redis_answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def drive(url: str, path: str | list[str], bodies: list[Path], levels: list[int], *,
          duration_s: float, warmup_s: float, min_done: int, max_s: float, rounds: int = 1,
          content_type: str = "image/png", server_pid: int | None = None,
          trace: bool = False, until: Path | None = None) -> list[dict]:
    """Run `bench.load` in its own process against `url`; its per-level results. Several
    `path`s: the requests cycle through them; `rounds`: each level's windows pooled over
    rounds that alternate the order of the levels (see bench.load); `server_pid`: the CPU time
    of that process and those under it is measured too; `trace`, `until`: see bench.load."""
    paths = [path] if isinstance(path, str) else list(path)
    spec = {"url": url, "path": paths[0], "paths": paths, "bodies": [str(b) for b in bodies],
            "levels": levels, "duration_s": duration_s, "warmup_s": warmup_s,
            "min_done": min_done, "max_s": max_s, "rounds": rounds,
            "content_type": content_type, "server_pid": server_pid, "trace": trace,
            "until": str(until) if until else None}
    proc = subprocess.run([sys.executable, "-m", "bench.load"], cwd=ROOT,
                          input=json.dumps(spec), capture_output=True, text=True,
                          timeout=rounds * len(levels) * (max_s + warmup_s + 600))
    if proc.returncode != 0:
        raise RuntimeError(f"bench.load failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def photo_pngs(folder: Path, sides: list[int], count: int, out: Path, seed: int = 0
               ) -> list[Path]:
    """`count` distinct PNGs (photos from `folder`, centre-cropped, resized; the sides cycle
    through `sides`), written to `out`. Distinct, so that no two requests in flight share
    a computation (single flight) or a cache entry."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        side = sides[i % len(sides)]
        if files:
            img = Image.open(files[i % len(files)]).convert("RGB")
            s = min(img.size)
            x0 = int(rng.integers(0, img.width - s + 1))
            y0 = int(rng.integers(0, img.height - s + 1))
            img = img.crop((x0, y0, x0 + s, y0 + s)).resize((side, side),
                                                            Image.Resampling.BICUBIC)
        else:
            a = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
            img = Image.fromarray(a).resize((side, side), Image.Resampling.BICUBIC)
        path = out / f"{i:04d}-{side}.png"
        img.save(path, optimize=False)
        paths.append(path)
    return paths
