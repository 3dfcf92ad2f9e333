"""A real Redis for tests: the one on 127.0.0.1:6379 when it answers, else our own (started by
bench.server, as the benchmarks start theirs)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from bench import server


def redis_on(port: int) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`bench.server.redis_on`, or the test skipped where redis-server is not installed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    return server.redis_on(port)


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """redis-server on a free port (no persistence); yields (url, process)."""
    port = server.free_port()
    with redis_on(port) as proc:
        yield f"redis://127.0.0.1:{port}/0", proc
