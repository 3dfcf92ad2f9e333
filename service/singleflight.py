"""Single flight: concurrent calls with the same key share one computation.

The computation runs as its own task, so one caller going away does not cancel it for the
others; when the last caller has gone it is cancelled (and so leaves the batch queue).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Call(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[str, _Call[T]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def waiting(self) -> int:
        """Callers currently waiting, over all keys."""
        return sum(call.waiters for call in self._calls.values())

    async def do(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Result of `fn()`, computed once for all concurrent callers; True if shared."""
        call = self._calls.get(key)
        shared = call is not None
        if call is None:
            call = _Call(asyncio.ensure_future(fn()))
            self._calls[key] = call
            call.task.add_done_callback(functools.partial(self._forget, key, call))
        call.waiters += 1
        try:
            return await asyncio.shield(call.task), shared
        finally:
            call.waiters -= 1
            if call.waiters == 0 and not call.task.done():
                call.task.cancel()

    def _forget(self, key: str, call: _Call[T], _task: asyncio.Task[T]) -> None:
        """Done callback of `call`'s task: drop it, unless a newer call holds the key."""
        if self._calls.get(key) is call:
            del self._calls[key]
