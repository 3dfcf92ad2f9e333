"""The private uvicorn hooks that `service.middleware.bounded_http_protocol` subclasses.

uvicorn has no public setting that bounds an httptools request head (see the function's
docstring), so the subclass overrides `HttpToolsProtocol` methods and reads its attributes.
A failure here means a uvicorn release changed them: re-read `httptools_impl.py` before
widening the uvicorn pin in pyproject.toml. The protocol's answers on a real socket (431, 408,
kept-alive requests untouched) are tested in test_service_faults.py."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.middleware import bounded_http_protocol
from tests.helpers.server import until

# The methods the subclass overrides and calls through super(), with their parameters.
HOOKS = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "on_message_begin": ["self"],
    "on_headers_complete": ["self"],
}


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000),
                "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def no_content(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def connect(protocol_class: type[asyncio.Protocol]) -> tuple[Any, FakeTransport]:
    config = uvicorn.Config(no_content, log_config=None, lifespan="off")
    protocol: Any = protocol_class(config=config, server_state=ServerState(),  # type: ignore[call-arg]
                                   app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


@pytest.mark.parametrize(("name", "parameters"), HOOKS.items())
def test_the_overridden_hooks_keep_their_signatures(name: str, parameters: list[str]) -> None:
    method = HttpToolsProtocol.__dict__.get(name)    # its own, not asyncio.Protocol's no-op
    assert method is not None, f"HttpToolsProtocol.{name} is gone"
    assert list(inspect.signature(method).parameters) == parameters


async def test_the_attributes_read_are_the_ones_uvicorn_sets() -> None:
    """`loop`, `transport`, and `cycle` with `response_complete`, at the moments read."""
    protocol, transport = connect(HttpToolsProtocol)
    assert protocol.loop is asyncio.get_running_loop()
    assert protocol.transport is transport and protocol.cycle is None
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    cycle = protocol.cycle
    assert isinstance(cycle, RequestResponseCycle) and cycle.response_complete is False
    await until(lambda: cycle.response_complete, timeout_s=5, what="the response")
    assert transport.written.startswith(b"HTTP/1.1 204 ")
    protocol.connection_lost(None)


async def test_uvicorn_calls_the_hooks_the_subclass_counts_on() -> None:
    """The parser calls on_message_begin and on_headers_complete from data_received: a whole
    head stops the head timer, a kept-alive second head restarts it, and an oversized one
    gets the 431 (read through `cycle.response_complete`)."""
    protocol, transport = connect(bounded_http_protocol(max_head_bytes=1024, head_timeout_s=30))
    assert protocol._head_timer is not None                  # armed by connection_made
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert protocol._head_timer is None and not protocol._in_head
    await until(lambda: protocol.cycle.response_complete, timeout_s=5, what="the response")
    protocol.data_received(b"GET / HTTP/1.1\r\nX-Long: ")
    assert protocol._in_head and protocol._head_timer is not None
    protocol.data_received(b"a" * 2048)
    _, status, refusal = bytes(transport.written).partition(b"\r\n\r\nHTTP/1.1 431 ")
    assert status and transport.eof
    assert json.loads(refusal.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    protocol.connection_lost(None)
