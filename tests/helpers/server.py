"""Run an app under uvicorn on a real socket inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1:<free port> until the block ends; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Running:
    app: FastAPI
    client: httpx.AsyncClient
    url: str

    @property
    def services(self):  # noqa: ANN201 - service.lifecycle.Services
        return self.app.state.services

    async def metric(self, metric_name: str, /, **labels: str) -> float:
        """Sum of the samples called `metric_name` whose labels include `labels` (0 if none)."""
        text = (await self.client.get("/metrics")).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric_name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total


@asynccontextmanager
async def running(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[Running]:
    """create_app(settings) served on a socket, with an HTTP client, models loaded."""
    app = create_app(settings)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        if wait_ready:
            await app.state.services.wait_ready()
        yield Running(app, client, url)


async def until(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:  # noqa: ANN001
    """Poll an async or sync predicate until it holds (for events the test cannot await)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
