"""The service under test: `python -m service` as a child process with this benchmark's
limits, and what is read of it (RSS from /proc, /metrics, its log)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from bench import hostile
from bench.reliability.client import get
from bench.reliability.stats import MiB
from bench.server import Launched, launch

STYLE, SR_MODEL, FACTOR = "udnie", "sr_x4", 4

# The limits the server runs with for every section (the rest are the service's defaults).
LIMITS = hostile.Limits(max_body_bytes=8 * MiB, max_pixels=2 * MiB, max_url_bytes=8192,
                        max_header_bytes=16384, body_timeout_s=2.0, header_timeout_s=2.0)


def limit_env(limits: hostile.Limits) -> dict[str, str]:
    return {"SERVICE_MAX_BODY_BYTES": str(limits.max_body_bytes),
            "SERVICE_MAX_PIXELS": str(limits.max_pixels),
            "SERVICE_MAX_OUTPUT_PIXELS": str(16 * limits.max_pixels),
            "SERVICE_MAX_URL_BYTES": str(limits.max_url_bytes),
            "SERVICE_MAX_HEADER_BYTES": str(limits.max_header_bytes),
            "SERVICE_BODY_TIMEOUT_S": str(limits.body_timeout_s),
            "SERVICE_HEADER_TIMEOUT_S": str(limits.header_timeout_s)}


class Service:
    """A launched service (bench.server.launch) and what this benchmark reads of it: its memory
    from /proc, /metrics, its log."""

    def __init__(self, launched: Launched) -> None:
        self.launched = launched
        self.port, self.proc, self.log_path = launched.port, launched.proc, launched.log_path

    async def ready(self, timeout_s: float = 300) -> None:
        """Wait for /readyz in a thread: the event loop stays free meanwhile."""
        await asyncio.to_thread(self.launched.wait_ready, timeout_s)

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak since start or the last reset), bytes."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value, _ = line.split()
                    out[name.rstrip(":")] = int(value) * 1024
        return out

    def rss(self) -> int:
        return self.status()["VmRSS"]

    def reset_peak(self) -> None:
        """Set VmHWM back to the current RSS (Linux 4.0+: write 5 to clear_refs)."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    async def metrics(self) -> dict[str, float]:
        """Samples of /metrics, keyed by 'name{labels}' as exposed."""
        _, _, body = await get(self.port, "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    async def idle(self, timeout_s: float = 120) -> float:
        """Wait for queue depth 0 and nothing in flight; seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            m = await self.metrics()
            depth = sum(v for k, v in m.items() if k.startswith("service_queue_depth"))
            if depth == 0 and m.get("service_inflight_requests", 0) == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise TimeoutError("the service did not become idle")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            with suppress(ValueError):
                lines.append(json.loads(line))
        return lines


@contextmanager
def service(env: dict[str, str], log_dir: Path, name: str) -> Iterator[Service]:
    """`python -m service` on the CPU with the shipped models, one torch thread, LIMITS and
    `env`, its log in `log_dir`/`name`.log; stopped at the end."""
    settings = {"SERVICE_DEVICE": "cpu", "SERVICE_MODELS": f"{STYLE},{SR_MODEL}",
                "SERVICE_LOG_LEVEL": "info", "SERVICE_TORCH_THREADS": "1",
                **limit_env(LIMITS), **env}
    with launch(settings, log_dir / f"{name}.log") as launched:
        yield Service(launched)


class RssSampler:
    """Samples a service's RSS every `interval_s` in the background."""

    def __init__(self, svc: Service, interval_s: float = 0.25) -> None:
        self.svc, self.interval_s = svc, interval_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    async def _run(self) -> None:
        while True:
            with suppress(OSError):
                self.samples.append((time.monotonic() - self._t0, self.svc.rss()))
            await asyncio.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def peak(self) -> int:
        return max(v for _, v in self.samples)
