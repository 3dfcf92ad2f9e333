"""One service process: uvicorn serving the app; SIGTERM drains, then it exits 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import torch
import uvicorn

from service.admission import Phase
from service.app import create_app
from service.lifecycle import Services
from service.middleware import bounded_http_protocol
from service.settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: readiness 503, new requests 503, admitted ones finish
    (up to drain_timeout_s), then uvicorn shuts down. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self.services = services
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.info("received %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        await self.services.drain()
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.services.admission.phase is Phase.FAILED:
            self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Run one service process until it is stopped (0) or fails (1), on `sockets` when given
    (a worker process), else on settings.host:port."""
    # CPU threads for the forward passes: the setting (else torch's default, the cores) is for
    # the whole pod, shared by its worker processes
    threads = settings.torch_threads or torch.get_num_threads()
    torch.set_num_threads(max(1, threads // settings.workers))
    app = create_app(settings)
    services: Services = app.state.services
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False,
                            # uvicorn annotates int; it only goes to asyncio.timeout, a float works
                            timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
                            log_level=settings.log_level,
                            # The request head, bounded in bytes (twice the app's URL + header
                            # limits, which answer 414/431 below that) and in time.
                            http=bounded_http_protocol(
                                max_head_bytes=2 * (settings.max_url_bytes
                                                    + settings.max_header_bytes),
                                head_timeout_s=settings.header_timeout_s))
    server = DrainingServer(config, services)
    server.run(sockets)
    if services.admission.phase is Phase.FAILED:
        log.error("exiting: %s", services.admission.error)
        return 1
    return 0
