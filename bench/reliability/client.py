"""The load: a small keep-alive HTTP client (httpx costs more CPU per request than the
server), the PNGs it sends, and closed-loop clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench import hostile


@dataclass
class Reply:
    status: int | None
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


class Client:
    """HTTP/1.1 to 127.0.0.1:port over a pool of kept-alive connections."""

    IDLE_S = 2.0   # below uvicorn's keep-alive timeout (5 s): never reuse a closing connection

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def _take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < self.IDLE_S:
                return reader, writer
            writer.close()
        return None

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: dict[str, str] | None = None, timeout_s: float = 60) -> Reply:
        started = time.monotonic()
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        step = "connect"
        try:
            conn = self._take()
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port),
                                              timeout_s)
            reader, writer = conn
            step = "send"
            writer.write(head.encode() + body)
            await writer.drain()
            step = "response"
            status, resp_headers, data = await asyncio.wait_for(hostile._response(reader),
                                                                timeout_s)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
            if conn is not None:
                conn[1].close()
            return Reply(None, time.monotonic() - started, error=f"{step}: {type(e).__name__}")
        if resp_headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return Reply(status, time.monotonic() - started, resp_headers, data)

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        return await asyncio.wait_for(hostile._response(reader), 30)
    finally:
        writer.close()


class Inputs:
    """Small PNGs; `unique()` makes every request's bytes (and so its cache key) new by adding a
    text chunk, without re-encoding pixels."""

    def __init__(self, side: int = 64, pool: int = 64, seed: int = 0) -> None:
        self.pool = [hostile.png(side, side, seed=seed + i) for i in range(pool)]
        self._n = 0

    def unique(self) -> bytes:
        self._n += 1
        base = self.pool[self._n % len(self.pool)]
        text = hostile.chunk(b"tEXt", b"n\x00" + str(self._n).encode())
        return base[:33] + text + base[33:]

    def repeated(self, k: int) -> bytes:
        return self.pool[k % len(self.pool)]


PNG = {"Content-Type": "image/png"}


async def closed_loop(clients: int, duration_s: float,
                      make: Callable[[int], Awaitable[Reply]]) -> list[Reply]:
    """`clients` loops each sending one request after the other for `duration_s`."""
    end = time.monotonic() + duration_s
    replies: list[Reply] = []
    counter = iter(range(10**9))

    async def loop() -> None:
        while time.monotonic() < end:
            replies.append(await make(next(counter)))

    await asyncio.gather(*(loop() for _ in range(clients)))
    return replies
