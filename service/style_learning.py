"""New styles learned by the service: a painting sent to POST /v1/styles becomes one more style
of the multi-style network, as a job (service/job_runner.py).

The job runs `python -m train multistyle --add-style` in a child process (the service does not
import `train`) on a copy of the network in a temporary store: only the new style's scale and
shift train, so the other styles stay as they were. Its progress comes from the trainer's JSON
lines. When it ends, the new version and the painting go into the store and the service
reloads (`Services.reload_models`): the reload gate (service/quality.py) checks the new style
against its painting before it takes traffic (its figures then join the manifest), and if it
fails, the store is put back as it was.
A failed or cancelled job leaves the store and every served style as they were. With Redis,
the other replicas are told (`Services.store_changed`) and reload too: those that share the
store (a volume) then serve the style.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_store import ModelStore
from model_store.store import MANIFEST, WEIGHTS
from service import errors
from service.job_runner import Handler, JobOutput
from service.jobs import Job
from service.tiling import Progress

log = logging.getLogger("service.styles")
Reload = Callable[[], Awaitable[dict[str, Any]]]
Announce = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Learning:
    """How styles are learned (the settings `learn_*`)."""

    store: Path                  # the served store: the network is read from and written to it
    base: str                    # the multi-style network that learns the new styles
    photos: Path | None          # what it trains on; None: learning is not available
    iterations: int
    time_limit_s: float
    crop_size: int
    threads: int = 1                   # the trainer's CPU threads
    extra_args: tuple[str, ...] = ()   # e.g. --vgg-weights FILE, --device cuda


def unavailable(learning: Learning, loaded: list[str]) -> str | None:
    """Why no style can be learned here, or None."""
    if learning.photos is None or not learning.photos.is_dir():
        return "no training photos are configured (SERVICE_LEARN_PHOTOS_DIR)"
    if learning.base not in loaded:
        return f"the multi-style network {learning.base!r} is not loaded"
    return None


def command(learning: Learning, painting: Path, name: str, store: Path, runs: Path,
            replace: bool = False) -> list[str]:
    assert learning.photos is not None
    return [sys.executable, "-m", "train", "multistyle", "--add-style", str(painting),
            "--name", name, "--init-from", learning.base, "--store", str(store),
            "--data", str(learning.photos), "--crop-size", str(learning.crop_size),
            "--iterations", str(learning.iterations),
            "--time-limit-s", str(learning.time_limit_s), "--checkpoint-dir", str(runs),
            "--checkpoint-every", str(10 * learning.iterations), "--save-dtype", "float32",
            "--progress-json", *(["--replace"] if replace else []), *learning.extra_args]


def handler(learning: Learning, reload: Reload, announce: Announce) -> Handler:
    """Learns the style a job names from the painting it carries; `announce` tells the other
    replicas once it is in the store."""

    async def run(job: Job, data: bytes, progress: Progress) -> JobOutput:
        name = job.spec["name"]
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="learn-style-") as tmp:
            work = Path(tmp)
            store = ModelStore(work / "store")
            shutil.copytree(learning.store / learning.base, store.root / learning.base)
            painting = work / "painting"
            painting.write_bytes(data)
            argv = command(learning, painting, name, store.root, work / "runs",
                           replace=bool(job.spec.get("replace")))
            last = await _train(argv, progress, learning.threads)
            manifest = store.manifest(learning.base)
            learned = manifest.metrics.get("learned_styles", {})
            learned[name] = {
                "painting_sha256": hashlib.sha256(data).hexdigest(),
                "command": " ".join(["python", *argv[1:]]).replace(str(work), "$TMP"),
                "steps": last.get("step"), "losses": last.get("losses"),
                "seconds": round(time.monotonic() - started, 1),
                "owner": job.caller,      # the API key that may learn it again (replace)
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            store.update_metrics(learning.base, {"learned_styles": learned})
            # Once started, the install finishes (or puts the store back) even if the job is
            # cancelled meanwhile: never a half-written store, nor a temporary folder removed
            # under it.
            install = asyncio.ensure_future(_install(learning, store, name, reload))
            try:
                report = await asyncio.shield(install)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await install
                raise
            learned[name]["gate"] = report["gates"].get(learning.base, {}).get(name)
            await _record_gate(learning, name, learned[name]["gate"], reload)
            await announce()
        return JobOutput(json.dumps({"style": name, "model": learning.base, "reload": report,
                                     **learned[name]}).encode(), "application/json")

    return run


async def _record_gate(learning: Learning, name: str, gate: dict[str, Any] | None,
                       reload: Reload) -> None:
    """Keep the figures the reload gate passed the style on with its manifest entry; the
    reload after it sees the same weights and only takes the manifest."""
    served = ModelStore(learning.store)
    learned = served.manifest(learning.base).metrics.get("learned_styles", {})
    if name in learned:
        learned[name]["gate"] = gate
        served.update_metrics(learning.base, {"learned_styles": learned})
        await reload()


async def _train(argv: list[str], progress: Progress, threads: int) -> dict[str, Any]:
    """Run the trainer, following its progress; its last progress line."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)})
    assert proc.stdout is not None and proc.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=20)

    async def drain(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            tail.append(line.decode(errors="replace").rstrip()[-300:])

    errors_read = asyncio.ensure_future(drain(proc.stderr))
    last: dict[str, Any] = {}
    try:
        async for line in proc.stdout:
            if not line.startswith(b"{"):
                continue
            with contextlib.suppress(ValueError):
                last = json.loads(line)
                step, total = int(last["step"]), int(last["iterations"])
                seconds, limit = float(last["seconds"]), float(last["time_limit_s"])
                left = (total - step) * seconds / max(step, 1)
                if limit:
                    left = min(left, max(0.0, limit - seconds))
                progress.done, progress.total = step, total
                progress.detail = {"losses": last["losses"], "seconds": seconds,
                                   "seconds_left": round(left, 1)}
        code = await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    finally:
        await errors_read
    if code != 0:
        raise errors.ComputeFailed(f"learning the style failed (exit {code}): "
                                   + " | ".join(list(tail)[-3:]))
    return last


async def _install(learning: Learning, trained: ModelStore, name: str, reload: Reload
                   ) -> dict[str, Any]:
    """Put the trained network and its painting into the served store and reload; if the
    reload refuses it, put the old files back (and reload again) and fail."""
    target = learning.store / learning.base
    saved = {f: (target / f).read_bytes() for f in (WEIGHTS, MANIFEST)}
    source = trained.root / learning.base
    (target / "paintings").mkdir(exist_ok=True)
    shutil.copyfile(source / "paintings" / f"{name}.jpg", target / "paintings" / f"{name}.jpg")
    for f in (WEIGHTS, MANIFEST):          # the weights first: the manifest names their digest
        shutil.copyfile(source / f, target / f"{f}.new")
        os.replace(target / f"{f}.new", target / f)
    report = await reload()
    problem = report["refused"].get(learning.base)
    if problem is None:
        log.info("style %s learned into %s", name, learning.base)
        return report
    for f, content in saved.items():
        (target / f"{f}.new").write_bytes(content)
        os.replace(target / f"{f}.new", target / f)
    (target / "paintings" / f"{name}.jpg").unlink(missing_ok=True)
    await reload()
    raise errors.StyleRejected(f"the learned style {name!r} was refused: {problem}")
