"""Admission: whether a transform request may start, and the load it counts toward.

One component owns the phase (starting -> ready -> draining, or failed), the count of admitted
requests (in flight, which draining waits for), the backlog, and every 429 and 503 that
admission answers, each with its `Retry-After`. It reads the batcher's queue depth; the batcher
keeps its own bounded queue as a last guard, and its refusal is worded here too (`busy`).

Two paths ask it: `shed`, the cheap one for the outermost middleware (a prebuilt 429, nothing
formatted), and `admitted`, the admission dependency's (a `ServiceError` with the numbers).
/readyz and the in-flight gauge read it. Knows nothing of HTTP beyond the status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from service import errors

RETRY_AFTER_S = 1   # every refusal here is brief: a batch, a load or a drain away


class Phase(enum.StrEnum):
    STARTING = "starting"     # models loading: /readyz and transform requests 503
    READY = "ready"
    DRAINING = "draining"     # SIGTERM: new requests 503, admitted ones finish
    FAILED = "failed"         # a model could not be loaded, or the device failed


@dataclass(eq=False)
class Ticket:
    """An admitted request: its deadline (time.monotonic()) for starting compute, and whether
    its body has been read (from then on it counts in the backlog until it is answered)."""

    deadline: float
    in_backlog: bool = False


# A prebuilt answer for the ASGI send: headers and body.
Answer = tuple[list[tuple[bytes, bytes]], bytes]
_Limit = Literal["queue", "inflight"]


def busy(detail: str) -> errors.QueueFull:
    """429 `queue_full` with Retry-After; `detail` names the limit reached."""
    return errors.QueueFull(f"{detail}; retry later",
                            headers={"Retry-After": str(RETRY_AFTER_S)})


def shutting_down(message: str) -> errors.ShuttingDown:
    """503 `shutting_down` with Retry-After."""
    return errors.ShuttingDown(message, headers={"Retry-After": str(RETRY_AFTER_S)})


def _prebuilt(error: errors.ServiceError) -> Answer:
    body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
    headers = [(b"content-type", b"application/json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    return headers + [(b"content-length", str(len(body)).encode())], body


_SHED: dict[_Limit, Answer] = {
    "queue": _prebuilt(busy("the batch queue is full")),
    "inflight": _prebuilt(busy("too many requests are in flight")),
}


class Queue(Protocol):
    """What admission reads of the batcher."""

    @property
    def queued(self) -> int: ...


class Admission:
    """The phase, the in-flight count and the backlog of one app instance, and the decisions
    taken from them.

    The backlog counts transform requests whose body has been read and whose response is not
    built yet: decoding, queued, computing or encoding. Admission refuses at `queue_limit` plus
    one batch (`max_batch_size`, the one being computed), not at the batch queue alone: a
    request admitted while the queue had room still spends a decode before it enters the
    queue, and under a flood every arrival in that window would be admitted, only to be refused
    after its decode. Counting from the end of the body closes the window.
    """

    def __init__(self, *, queue_limit: int, max_batch_size: int, max_inflight: int,
                 request_timeout_s: float, queue: Queue) -> None:
        self.queue_limit = queue_limit
        self.backlog_limit = queue_limit + max_batch_size
        self.max_inflight = max_inflight
        self.request_timeout_s = request_timeout_s
        self._queue = queue
        self._phase = Phase.STARTING
        self._error: str | None = None
        self._inflight = 0
        self._backlog = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- what readers see ---------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def error(self) -> str | None:
        """Why the service failed: a model did not load, or the device failed (None unless
        failed)."""
        return self._error

    @property
    def inflight(self) -> int:
        """Admitted requests not yet answered."""
        return self._inflight

    @property
    def backlog(self) -> int:
        """Admitted requests past their body and not yet answered (see the class docstring)."""
        return self._backlog

    @property
    def queued(self) -> int:
        """Requests waiting in the batcher's queue."""
        return self._queue.queued

    # -- phases --------------------------------------------------------------------------------

    def mark_ready(self) -> None:
        """Models loaded: ready, unless draining already began."""
        if self._phase is Phase.STARTING:
            self._phase = Phase.READY

    def mark_failed(self, error: str) -> None:
        self._phase, self._error = Phase.FAILED, error

    def start_draining(self) -> None:
        """Refuse new requests from now on; admitted ones finish (see `wait_idle`)."""
        self._phase = Phase.DRAINING

    # -- decisions -----------------------------------------------------------------------------

    def _overload(self) -> _Limit | None:
        if self._backlog >= self.backlog_limit or self.queued >= self.queue_limit:
            return "queue"
        if self._inflight >= self.max_inflight:
            return "inflight"
        return None

    def shed(self) -> Answer | None:
        """The cheap check, before anything is done for a request: a prebuilt 429 while ready
        and overloaded, else None (also while not ready: `refusal` answers 503 then)."""
        if self._phase is not Phase.READY:
            return None
        limit = self._overload()
        return None if limit is None else _SHED[limit]

    def refusal(self) -> errors.ServiceError | None:
        """Why a request may not be admitted now (503 by phase, 429 by load), or None."""
        if self._phase is Phase.DRAINING:
            return shutting_down("the server is shutting down; retry on another instance")
        if self._phase is Phase.STARTING:
            return errors.NotReady("the models are still loading; retry shortly",
                                   headers={"Retry-After": str(RETRY_AFTER_S)})
        if self._phase is Phase.FAILED:
            return errors.NotReady(f"the service failed: {self._error}")
        limit = self._overload()
        if limit == "queue":
            return busy(f"the server is busy: {self.queued} requests are queued, "
                        f"{self._backlog} decoding, queued or computing (queue limit "
                        f"{self.queue_limit})")
        if limit == "inflight":
            return busy(f"{self._inflight} requests are in flight (limit {self.max_inflight})")
        return None

    @contextlib.contextmanager
    def admitted(self) -> Iterator[Ticket]:
        """Admit a request (or raise its refusal) and count it in flight until the block ends."""
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        ticket = Ticket(time.monotonic() + self.request_timeout_s)
        self._inflight += 1
        self._idle.clear()
        try:
            yield ticket
        finally:
            if ticket.in_backlog:
                ticket.in_backlog = False
                self._backlog -= 1
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def body_read(self, ticket: Ticket) -> None:
        """Count `ticket`'s request in the backlog from now until it is answered."""
        if not ticket.in_backlog:
            ticket.in_backlog = True
            self._backlog += 1

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when every admitted request has been answered within `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
