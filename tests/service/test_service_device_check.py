"""/readyz checks the device with a tiny forward pass: a sticky device error marks the service
failed (so `python -m service` exits and Kubernetes restarts it); out of memory does not."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers import images
from tests.helpers.server import running

PNG = {"content-type": "image/png"}


class Fails(nn.Module):
    """A network whose every forward pass raises `error` (fault injection)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        raise self.error


async def test_a_sticky_device_error_fails_readiness(make_settings) -> None:
    async with running(make_settings(models=["udnie"], device_check_s=0)) as r:
        assert (await r.client.get("/readyz")).status_code == 200
        faulty = Fails(RuntimeError("CUDA error: an illegal memory access was encountered"))
        r.services.registry.get("udnie").module = faulty
        ready = await r.client.get("/readyz")
        assert ready.status_code == 503 and faulty.calls == 1
        assert ready.json()["status"] == "failed"
        assert "health forward" in ready.json()["error"]
        assert "illegal memory access" in ready.json()["error"]
        refused = await r.client.post("/v1/stylize?style=udnie", content=images.png(seed=1),
                                      headers=PNG)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"


async def test_out_of_memory_in_the_check_is_a_busy_device(make_settings) -> None:
    async with running(make_settings(models=["udnie"], device_check_s=0)) as r:
        faulty = Fails(torch.OutOfMemoryError("CUDA out of memory"))
        r.services.registry.get("udnie").module = faulty
        assert (await r.client.get("/readyz")).status_code == 200
        assert faulty.calls == 1


async def test_the_check_runs_at_most_every_interval(make_settings) -> None:
    async with running(make_settings(models=["udnie"], device_check_s=3600)) as r:
        assert (await r.client.get("/readyz")).status_code == 200   # the first check
        faulty = Fails(RuntimeError("CUDA error: unspecified launch failure"))
        r.services.registry.get("udnie").module = faulty
        for _ in range(3):
            assert (await r.client.get("/readyz")).status_code == 200
        assert faulty.calls == 0
