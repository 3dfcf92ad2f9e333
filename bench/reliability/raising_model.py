"""The raising-model fault, served in-process: the wrapper cannot cross a process boundary."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from contextlib import suppress
from typing import Any

from bench import hostile
from bench.reliability.client import PNG, Client, get
from bench.reliability.process import STYLE
from bench.server import free_port


def _id_image(n: int, poisoned: bool, side: int = 32) -> bytes:
    """A PNG that carries its request number in pixel (0, 0) and a poison mark in (0, 1)."""
    px = hostile.pixels(side, side, seed=n).copy()
    px[0, 0] = [(n >> 16) & 255, (n >> 8) & 255, n & 255]
    px[0, 1] = [255, 0, 255] if poisoned else [0, 255, 0]
    return hostile.encode(hostile.Image.fromarray(px), "PNG")


async def fault_raising_model(quick: bool) -> dict[str, Any]:
    """The shipped style network behind a wrapper whose forward raises (a RuntimeError, as a
    device's errors are) for any batch that holds a poisoned image: the batcher retries such a
    batch in halves, so only the poisoned requests should fail. Served in-process (the wrapper
    cannot cross a process boundary)."""
    import torch
    import uvicorn
    from torch import nn

    from service.app import create_app
    from service.middleware import bounded_http_protocol
    from service.settings import Settings

    class RaisesOnPoison(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.batches: list[tuple[list[int], bool]] = []
            self.lock = threading.Lock()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            marks = (x[:, :, 0, :2].float() * 255).round().to(torch.int64)  # (N, 3, 2)
            ids = (marks[:, 0, 0] * 65536 + marks[:, 1, 0] * 256 + marks[:, 2, 0]).tolist()
            poisoned = bool(((marks[:, :, 1] == torch.tensor([255, 0, 255])).all(1)).any())
            with self.lock:
                self.batches.append((ids, poisoned))
            if poisoned:
                raise RuntimeError("injected fault")
            return self.inner(x)

    # policy fixed: the module itself runs every batch (no rewritten execution path around it)
    settings = Settings(device="cpu", models=[STYLE], redis_url=None, max_batch_size=8,
                        max_wait_ms=20, batch_policy="fixed", torch_threads=1)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning",
                                           http=bounded_http_protocol(  # type: ignore[arg-type]
                                               max_head_bytes=65536, head_timeout_s=10)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while True:
            with suppress(OSError, ValueError, asyncio.IncompleteReadError):
                if (await get(port, "/readyz"))[0] == 200:
                    break
            await asyncio.sleep(0.2)
        model = app.state.services.registry.get(STYLE)
        wrapper = RaisesOnPoison(model.module)
        model.module = wrapper
        client = Client(port)
        total = 120 if quick else 480
        poisoned = {n for n in range(1, total + 1) if n % 40 == 3}
        status_of: dict[int, int | None] = {}
        numbers = iter(range(1, total + 1))

        async def worker() -> None:
            for n in numbers:
                reply = await client.request("POST", f"/v1/stylize?style={STYLE}",
                                             _id_image(n, n in poisoned), PNG)
                status_of[n] = reply.status

        await asyncio.gather(*(worker() for _ in range(16)))
        after = await client.request("POST", f"/v1/stylize?style={STYLE}",
                                     _id_image(total + 1, False), PNG)
        client.close()
    finally:
        server.should_exit = True
        thread.join(30)
    in_failed = {i for ids, bad in wrapper.batches if bad for i in ids}
    failed = {n for n, s in status_of.items() if s == 500}
    return {
        "model": f"{STYLE} (shipped) behind a wrapper raising on poisoned batches",
        "requests": total, "poisoned": len(poisoned),
        "batches": len(wrapper.batches), "failed_batches": sum(b for _, b in wrapper.batches),
        "requests_in_failed_batches": len(in_failed),
        "answered_500": len(failed),
        "500s_exactly_the_poisoned": failed == poisoned,
        "others_200": all(s == 200 for n, s in status_of.items() if n not in poisoned),
        "statuses": dict(Counter(status_of.values())),
        "after_status": after.status,
    }
