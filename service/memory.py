"""A per-process budget of host memory for the requests being computed.

The limits on pixels bound one request; they do not bound how many big ones run at once, and
a pod over its memory limit is killed with every request in flight on it. So each request,
once decoded, reserves what it is predicted to hold until its answer is encoded (its input,
the network's tensors or its tiles in flight, the stitched output, the encoder's copy), and
waits while the budget is taken. One that could never fit is refused at once (413); one still
waiting at its deadline gets 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from service import errors

MiB = 1 << 20


class MemoryBudget:
    def __init__(self, limit_bytes: int | None) -> None:
        self.limit = limit_bytes       # None: no budget
        self.used = 0
        self._freed = asyncio.Condition()

    def check(self, nbytes: int, what: str) -> None:
        """Refuse (413) what could never fit, however long it waited."""
        if self.limit is not None and nbytes > self.limit:
            raise errors.ImageTooLarge(
                f"{what} needs about {nbytes / MiB:,.0f} MiB of memory, over this server's "
                f"{self.limit / MiB:,.0f} MiB budget; send a smaller image")

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, deadline: float, what: str) -> AsyncIterator[None]:
        """Hold `nbytes` of the budget for the block; `what` names the request in errors."""
        self.check(nbytes, what)
        limit = self.limit
        if limit is None:
            yield
            return
        async with self._freed:
            try:
                await asyncio.wait_for(
                    self._freed.wait_for(lambda: self.used + nbytes <= limit),
                    max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise errors.WouldMissDeadline(
                    f"{what} waited for {nbytes / MiB:,.0f} MiB of memory until its deadline; "
                    "retry later", headers={"Retry-After": "1"}) from None
            self.used += nbytes
        try:
            yield
        finally:
            async with self._freed:
                self.used -= nbytes
                self._freed.notify_all()
