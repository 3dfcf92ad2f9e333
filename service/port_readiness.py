"""Readiness of a port that several workers share: ready only when every worker is.

Why: the kernel spreads connections over the workers (service/workers.py), so a /readyz that a
ready worker answers 200 while another still loads its models lets traffic in that the loading
one answers 503 (seen: a benchmark's first requests after /readyz said 200). Each worker marks
itself ready with a file in a folder its supervisor made, and /readyz counts the marks."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "SERVICE_WORKERS_READY_DIR"   # set by the supervisor, inherited by its workers


def mark_ready() -> None:
    """This worker has loaded its models (nothing to do for a service of one process)."""
    folder = os.environ.get(ENV)
    if folder:
        Path(folder, str(os.getpid())).touch()


def workers_ready() -> int | None:
    """How many of the port's workers are ready; None for a service of one process."""
    folder = os.environ.get(ENV)
    return len(os.listdir(folder)) if folder else None
