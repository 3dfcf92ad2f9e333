"""Which of the project's files one stylize request passes through, in the order it reaches them.

Runs `python -m service` as users do (shipped models, default settings, one style loaded to
start fast), with a profile hook in every thread that records the project files whose Python
functions are called while one `POST /v1/stylize` travels from the socket to the answer (a
cache miss: the first request). ARCHITECTURE.md lists this path; tests/test_architecture.py
checks that the two agree.

    python scripts/request_path.py            # one file a line
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.server import launch

REPO = Path(__file__).resolve().parents[1]

# Imported by the service process at start-up (as `sitecustomize`): between SIGUSR1 and SIGUSR2,
# from the moment a connection is made, record the project files of every Python call on any
# thread, in order of first call; but not the calls of the background tasks that run whether or
# not a request comes: the server's own periodic tick (its main task, `serve`) and the job
# runner's (tasks named job-*, waiting for jobs).
_HOOK = """
import asyncio, json, os, signal, sys, threading
_root, _out = os.environ["TRACE_ROOT"], os.environ["TRACE_OUT"]
_seen, _state = {}, {"armed": False, "on": False}
def _background():
    try:
        task = asyncio.current_task()
    except RuntimeError:          # a thread without an event loop: a worker of the request
        return False
    return task is not None and (task.get_coro().__name__ == "serve"
                                 or task.get_name().startswith("job-"))
def _profile(frame, event, arg):
    if event != "call" or not _state["armed"]:
        return
    code = frame.f_code
    if not _state["on"]:
        _state["on"] = code.co_name == "connection_made"
    name = code.co_filename
    if (_state["on"] and name not in _seen and name.startswith(_root)
            and "/.venv/" not in name and not _background()):
        _seen[name] = None
def _start(*_):
    _seen.clear()
    _state["armed"] = True
def _stop(*_):
    _state["armed"] = _state["on"] = False
    with open(_out, "w") as f:
        json.dump(list(_seen), f)
signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
sys.setprofile(_profile)
threading.setprofile(_profile)
"""

def request_path(style: str = "udnie", repo: Path = REPO, timeout_s: float = 300) -> list[str]:
    """The paths relative to `repo` (a checkout), in order of first call."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(_HOOK)
        out = Path(tmp) / "path.json"
        env = {"PYTHONPATH": tmp, "TRACE_ROOT": str(repo) + os.sep, "TRACE_OUT": str(out),
               "SERVICE_MODELS": style, "SERVICE_BATCH_POLICY": "fixed"}
        with launch(env, Path(tmp) / "service.log", repo) as service:
            service.wait_ready(timeout_s)
            service.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            answer = httpx.post(f"{service.url}/v1/stylize", params={"style": style},
                                content=buf.getvalue(), headers={"content-type": "image/png"},
                                timeout=60)
            answer.raise_for_status()
            time.sleep(0.5)   # the response's last hooks (access log, metrics) have run
            service.proc.send_signal(signal.SIGUSR2)
            while not out.exists() and service.proc.poll() is None:
                time.sleep(0.05)
            files = json.loads(out.read_text())
    return [str(Path(f).relative_to(repo)) for f in files]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="udnie")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to run")
    args = parser.parse_args()
    files = request_path(args.style, args.repo.resolve())
    print("\n".join(files))
    print(f"{len(files)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
