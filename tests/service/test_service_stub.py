"""The stub device (service/stub.py): its cost curve, its outputs, and one device for all."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.stub import StubCost, StubRegistry


def test_the_cost_is_the_recorded_curve_scaled_by_pixels() -> None:
    cost = StubCost(256, {1: 1.0, 8: 4.0, 64: 32.0})
    assert cost.seconds(1, 256 * 256) == pytest.approx(0.001)
    assert cost.seconds(8, 256 * 256) == pytest.approx(0.004)
    assert cost.seconds(4, 256 * 256) == pytest.approx((1 + 3 * 3 / 7) / 1000)  # 1..8, linear
    assert cost.seconds(128, 256 * 256) == pytest.approx(0.064)   # the last ms per image
    assert cost.seconds(8, 512 * 512) == pytest.approx(0.016)     # 4x the pixels


@pytest.fixture
def registry(store_root: Path, tmp_path: Path) -> StubRegistry:
    cost_file = tmp_path / "cost.json"
    cost_file.write_text(json.dumps({"side": 64, "batch_ms": {"1": 200, "2": 300}}))
    reg = StubRegistry(store_root, ["udnie", "sr4"], cost_file, max_batch_size=4)
    reg.load_all()
    return reg


def test_a_stub_forward_returns_the_input_after_the_recorded_wait(
        registry: StubRegistry) -> None:
    images = [np.full((64, 64, 3), i, np.uint8) for i in range(2)]
    started = time.monotonic()
    out = registry.run_batch(("udnie", 64, 64), [(a, None) for a in images])
    assert time.monotonic() - started >= 0.3
    assert all(np.array_equal(o, a) for o, a in zip(out, images, strict=True))
    model = registry.get("udnie")
    assert model is not None and model.policy.default.path == "stub"
    assert model.policy.default.max_batch == 4


def test_super_resolution_repeats_each_pixel(registry: StubRegistry) -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    (out,) = registry.run_batch(("sr4", 2, 3), [(image, None)])
    assert out.shape == (8, 12, 3)
    assert np.array_equal(out[::4, ::4], image) and np.array_equal(out[3, 3], image[0, 0])


def test_concurrent_forwards_take_turns_on_the_one_device(registry: StubRegistry) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    threads = [threading.Thread(target=registry.run_batch, args=(("udnie", 64, 64),
                                                                 [(image, None)]))
               for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.6   # 3 x 0.2 s, not 0.2 s at once
