"""The run around the optimisation loop: device, processes, seed, and teardown on failure."""

from __future__ import annotations

import pytest
import torch

from train import distributed, loop
from train.config import TrainConfig


def test_train_tears_down_the_process_group_when_building_fails(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "teardown", lambda: calls.append("teardown"))

    def build(device: torch.device) -> loop.Parts:
        raise FileNotFoundError("no image folder")

    with pytest.raises(FileNotFoundError):
        loop.train(TrainConfig(device="cpu"), build)
    assert calls == ["teardown"]


def test_train_seeds_before_building():
    """The network's initial weights follow from --seed alone."""
    seen = []

    def build(device: torch.device) -> loop.Parts:
        seen.append(torch.rand(3))
        raise RuntimeError("stop")

    for _ in range(2):
        torch.rand(5)  # whatever ran before does not matter
        with pytest.raises(RuntimeError):
            loop.train(TrainConfig(device="cpu", seed=3), build)
    torch.manual_seed(3)
    assert torch.equal(seen[0], torch.rand(3)) and torch.equal(seen[1], seen[0])


@pytest.mark.parametrize(("amp", "expected"), [("none", None), ("fp16", torch.float16),
                                               ("bf16", torch.bfloat16)])
def test_autocast_dtype_on_cpu(amp, expected):
    assert loop.autocast_dtype(amp, torch.device("cpu")) == expected
