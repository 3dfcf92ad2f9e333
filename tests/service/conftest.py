"""Fixtures for the service tests: a tiny model store, settings, Redis."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # make `tests.helpers` importable however pytest is started
    sys.path.insert(0, str(ROOT))

from bench.server import redis_answers  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.helpers.models import make_store  # noqa: E402
from tests.helpers.redis_server import redis_server  # noqa: E402
from tests.helpers.server import Running, running  # noqa: E402

torch.set_num_threads(1)
# No warm-up timing of the batch policy (service/policy.py) unless a test asks for it: fast,
# deterministic batches. Settings read the environment, so this covers Settings(...) too.
os.environ.setdefault("SERVICE_BATCH_POLICY", "fixed")
# Measured policies are not kept across tests (service/policy_store.py) unless a test asks;
# services started as subprocesses (no SERVICE_* inherited) keep theirs in a temporary folder.
os.environ.setdefault("SERVICE_POLICY_FILE", "")
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="perceptual-service-tests-")


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    make_store(root)
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(store_root: Path) -> AsyncIterator[Running]:
    """The app on the tiny store, served on a real socket, shared by a module's tests (modules
    that need other settings define their own `api`)."""
    settings = Settings(model_store=store_root, device="cpu", dtype="float32", redis_url=None,
                        max_wait_ms=1, max_pixels=1_000_000)
    async with running(settings) as r:
        yield r


@pytest.fixture
def make_settings(store_root: Path) -> Callable[..., Settings]:
    """Settings for a test app: the tiny store, CPU, no Redis, short waits."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = dict(
            model_store=store_root, device="cpu", dtype="float32", redis_url=None,
            max_wait_ms=2, request_timeout_s=30, max_pixels=1_000_000,
            max_output_pixels=4_000_000, drain_timeout_s=10)
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """127.0.0.1:6379 when it answers, else a redis-server of our own on a free port."""
    if redis_answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    with redis_server() as (url, _proc):
        yield url
