"""Per-request plumbing as plain ASGI (no BaseHTTPMiddleware, so streaming and disconnects pass
through untouched): load shedding, X-Request-ID, the latency histogram and one access log line;
limits on the URL and header sizes; and the HTTP protocol that bounds the request head before
any of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.admission import Admission
from service.logs import request_id_var
from service.metrics import Metrics

log = logging.getLogger("service.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_LOGGED_PATH_CHARS = 256   # a hostile 8 KB path must not become an 8 KB log line


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed_s = time.monotonic() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            model = str(state.get("model", ""))
            self.metrics.request_duration.labels(route=path, model=model,
                                                 status=str(status)).observe(elapsed_s)
            logged_path = scope["path"][:_LOGGED_PATH_CHARS]
            log.info("%s %s %d", scope["method"], logged_path, status, extra={
                "method": scope["method"], "path": logged_path, "status": status,
                "duration_ms": round(elapsed_s * 1000, 2), "model": model or None,
                "cache": state.get("cache")})
            request_id_var.reset(token)


class LoadShed:
    """Outermost: while the admission says the service is overloaded (`Admission.shed`: the
    backlog or the batch queue full, or `max_inflight` requests admitted), a transform request
    gets its prebuilt 429 `queue_full` with `Retry-After` before anything else is done for it:
    no access log line, no request id, no routing or dependencies, no body read.

    Under a flood of 10x capacity the full path's refusal (~0.6 ms of CPU) would take the
    event loop from the admitted requests; this one costs about a fifth. Shed requests are
    counted in `service_rejections_total{reason="queue_full"}` and summed up in one warning
    every `SUMMARY_S`. The admission dependency asks the same admission again for requests
    that race past this one."""

    SUMMARY_S = 10.0
    PATHS = frozenset({"/v1/stylize", "/v1/superres"})

    def __init__(self, app: ASGIApp, *, admission: Admission, metrics: Metrics) -> None:
        self.app = app
        self.admission = admission
        self._shed_counter = metrics.rejections.labels(reason="queue_full")
        self._since_summary = 0
        self._summary_at = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.PATHS:
            answer = self.admission.shed()
            if answer is not None:
                self._shed_counter.inc()
                self._summarize()
                await send({"type": "http.response.start", "status": 429,
                            "headers": answer[0]})
                await send({"type": "http.response.body", "body": answer[1]})
                return
        await self.app(scope, receive, send)

    def _summarize(self) -> None:
        self._since_summary += 1
        now = time.monotonic()
        if now - self._summary_at >= self.SUMMARY_S:
            log.warning("overloaded: shed %d requests with 429 in the last %.0f s",
                        self._since_summary, now - self._summary_at)
            self._since_summary, self._summary_at = 0, now


class RequestLimits:
    """414 for a path + query string over `max_url_bytes`, 431 for headers over
    `max_header_bytes` (names + values), before routing, auth or any body is read."""

    def __init__(self, app: ASGIApp, *, max_url_bytes: int, max_header_bytes: int,
                 metrics: Metrics) -> None:
        self.app = app
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self._check(scope)
            if error is not None:
                await errors.rejection(error, self.metrics)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> errors.ServiceError | None:
        path = scope.get("raw_path") or scope["path"].encode()
        url_bytes = len(path) + len(scope.get("query_string", b""))
        if url_bytes > self.max_url_bytes:
            return errors.UrlTooLong(f"the path and query string are {url_bytes} bytes; the "
                                     f"limit is {self.max_url_bytes}")
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            return errors.HeadersTooLarge(f"the headers are {header_bytes} bytes; the limit is "
                                          f"{self.max_header_bytes}")
        return None


def bounded_http_protocol(*, max_head_bytes: int, head_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a bound on the request head, in bytes and in time.

    uvicorn buffers a request's line and headers without limit before the app sees any of it
    (a single 200 MB header value costs 400 MB of RSS) and waits forever for a head sent a
    byte at a time. This subclass counts the bytes fed while a head is incomplete and answers
    431 past `max_head_bytes`, and answers 408 when a head is not complete `head_timeout_s`
    after the connection opened or the request's first byte arrived. Both close the connection.
    Pass it as `uvicorn.Config(http=...)`.

    Why a subclass of uvicorn's private `HttpToolsProtocol`: no public setting bounds an
    httptools head. `h11_max_incomplete_event_size` bounds h11's only, and answers a plain-text
    400; `timeout_keep_alive` is armed only after a response and cancelled by any byte, so a
    new connection, or a head sent a byte at a time, waits forever; `limit_concurrency` counts
    connections, not bytes. So pyproject.toml pins uvicorn to the range tested, and
    tests/service/test_service_http_protocol.py fails if the hooks and attributes used here
    change.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHeadProtocol(HttpToolsProtocol):
        _in_head = True
        _head_bytes = 0
        _head_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_head:
                self._start_head()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._stop_head_timer()
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:      # lingering after a refusal: read and drop
                return
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refuse(errors.HeadersTooLarge(
                        f"the request head is over {max_head_bytes} bytes"))

        def _start_head(self) -> None:
            self._in_head = True
            self._head_bytes = 0
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._refuse(errors.RequestTimeout(
                    f"the request head was not complete within {head_timeout_s:g} s"))

        def _refuse(self, error: errors.ServiceError) -> None:
            """Answer, then linger: closing with unread input would send a TCP reset, which
            can destroy the answer before the client reads it. So shut our side, drop what
            still comes, and close when the client does or after `_LINGER_S`."""
            log.warning("refused a request head: %s", error.message)
            self._stop_head_timer()
            self._refused = True
            if self.cycle is not None and not self.cycle.response_complete:   # mid-response
                self.transport.close()
                return
            body = json.dumps({"error": {"code": error.code, "message": error.message}})
            self.transport.write(
                f"HTTP/1.1 {error.status} {_REASONS[error.status]}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n{body}".encode())
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)

    return BoundedHeadProtocol


_LINGER_S = 1.0
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
