"""Several worker processes on one port (`SERVICE_WORKERS`), supervised by this process.

Why: one process has one event loop, and the GIL lets it run about a millisecond of Python per
request (HTTP, routing, hand-offs), so it answers at most ~1,000 requests/s however many cores
decode and encode, while an H200 runs about 2,000 256x256 images/s. So each worker is a whole
service: its own event loop, codec threads, batcher, cache, admission limits and copy of the
models on the device (with CUDA MPS their kernels share the GPU; Triton's `instance_group`
works the same way). This was chosen over workers that hand decoded images to one device
process through shared memory: it needs no IPC on the request path, a worker that fails takes
only its own requests with it, and its batches stay large enough where they count (64
clients over 4 workers make batches of up to 16, within 10 % of the H200's best per image,
`bench/results/model-cuda-h200.json`). The workers accept on sockets of their own bound to the
one port (SO_REUSEPORT), over which the kernel spreads the connections. `python -m bench
service --device stub` measures one worker against two.

Readiness: /readyz answers 200 only once every worker is ready (service/port_readiness.py).

Metrics: the workers write them to files in one folder (prometheus_client's multiprocess
mode), and whichever worker answers /metrics sums them.

Signals: SIGTERM or SIGINT here is passed on to every worker (they drain, then exit); a second
one is passed on too (they exit at once). The workers run in their own process group, so that
a terminal's Ctrl-C reaches them once, through this process. A worker that exits on its own (a
failed start, a failed device) stops the others, and this process exits 1, so that the
container restarts whole.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

from service import port_readiness
from service.logs import configure_logging
from service.server import serve
from service.settings import Settings, get_settings

log = logging.getLogger("service.workers")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"   # read by prometheus_client at import


def listen(host: str, port: int) -> socket.socket:
    """A worker's own listening socket on host:port, which the others bind too
    (SO_REUSEPORT): the kernel spreads new connections over them evenly. On one shared socket
    whichever worker wakes first accepts a whole burst of connections (asyncio accepts up to
    the backlog at once), and keep-alive clients then stay on it: measured, 32 clients on two
    workers ran slower than 16."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def supervise(settings: Settings, overrides: dict[str, Any]) -> int:
    """Start `settings.workers` workers on settings.host:port and wait for them; the exit
    status for the container (see the module docstring)."""
    listen(settings.host, settings.port).close()   # a port in use fails here, not in N workers
    metrics_dir = tempfile.mkdtemp(prefix="service-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir       # inherited by the workers
    ready_dir = tempfile.mkdtemp(prefix="service-ready-")
    os.environ[port_readiness.ENV] = ready_dir
    spawn = multiprocessing.get_context("spawn")    # no fork: torch and CUDA do not survive it
    procs = [spawn.Process(target=_worker, args=(overrides, os.getpid()),
                           name=f"service-worker-{i}") for i in range(settings.workers)]
    signals: list[int] = []

    def on_signal(sig: int, frame: FrameType | None) -> None:
        signals.append(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    for p in procs:
        p.start()
    log.info("%d workers on %s:%d: pids %s", len(procs), settings.host, settings.port,
             [p.pid for p in procs])
    passed_on = 0
    failed = False
    try:
        while any(p.is_alive() for p in procs):
            wait([p.sentinel for p in procs], timeout=0.2)
            if passed_on < min(len(signals), 2):
                passed_on += 1
                log.info("passing %s on to the workers", signal.Signals(signals[-1]).name)
                _signal_all(procs, signal.SIGTERM)
            elif not signals and not failed and any(not p.is_alive() for p in procs):
                failed = True    # a worker stopped by itself: stop the others
                dead = [(p.name, p.exitcode) for p in procs if not p.is_alive()]
                log.error("worker exited on its own (%s): stopping the others", dead)
                _signal_all(procs, signal.SIGTERM)
    finally:
        deadline = time.monotonic() + settings.drain_timeout_s + 10
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(ready_dir, ignore_errors=True)
    return 1 if failed or any(p.exitcode for p in procs) else 0


def _signal_all(procs: Sequence[multiprocessing.process.BaseProcess], sig: int) -> None:
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, sig)


def _worker(overrides: dict[str, Any], parent: int) -> None:
    """One worker: the whole service on its own socket of the port (service.server.serve)."""
    os.setpgid(0, 0)   # out of the terminal's process group: signals come through the parent
    settings = get_settings(**overrides)
    configure_logging(settings.log_level)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="parent-watch").start()
    raise SystemExit(serve(settings, [listen(settings.host, settings.port)]))


def _exit_with_parent(parent: int) -> None:
    """Drain and exit if the supervisor dies without stopping us (e.g. SIGKILL)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
