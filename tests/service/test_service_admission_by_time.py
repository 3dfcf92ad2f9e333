"""Admission by predicted compute time: what the measured speed says cannot finish within the
request's time is refused at once, 413 when no wait would help, 503 when the wait so far is
the cause."""

from __future__ import annotations

import dataclasses
import time

import pytest

from service import errors
from service.policy import ModelPolicy, SizeChoice
from service.tiling import TileConfig
from tests.helpers import images
from tests.helpers.server import running


def measured(ms_per_image: dict[int, float], side: int = 32) -> ModelPolicy:
    return ModelPolicy("measured", [SizeChoice(side, "base", 4, ms_per_image)],
                       SizeChoice(0, "base", 4))


def test_the_prediction_scales_the_cheapest_measured_cost_by_pixels(store_root):
    from service.registry import Registry

    (model,) = Registry(store_root, ["udnie"], "cpu", "float32").load_all()
    assert model.predicted_s(64, 64) is None                      # fixed policy: no measure
    model.policy = measured({1: 10.0, 2: 8.0})                    # 8 ms per 32x32 at best
    assert model.predicted_s(64, 64) == pytest.approx(8 / 1024 * 4096 / 1000)
    assert model.predicted_s(64, 64, pixels=10_000) == pytest.approx(8 / 1024 * 10_000 / 1000)


def test_tiles_count_their_overlaps():
    tiling = TileConfig(threshold_pixels=1000, size=32, overlap=8, superres_size=16,
                        superres_overlap=4)
    assert tiling.computed_pixels(20, 20, 1) == 400               # under the threshold
    assert tiling.computed_pixels(40, 40, 1) == (2 * 32) * (2 * 32)   # 2 x 2 tiles of 32
    assert tiling.computed_pixels(40, 24, 4) == (3 * 16) * (2 * 16)   # x4: tiles of 16


async def test_work_over_the_time_limit_is_refused_at_once(make_settings):
    settings = make_settings(models=["udnie"], cache_bytes=0, request_timeout_s=5)
    async with running(settings) as r:
        (model,) = r.services.registry.models()
        body = images.png(64, 64)
        ok = await r.client.post("/v1/stylize?style=udnie", content=body,
                                 headers={"content-type": "image/png"})
        assert ok.status_code == 200                              # nothing measured: admitted
        model.policy = measured({1: 2000.0})                      # 2 s per 32x32: 8 s here
        started = time.monotonic()
        answer = await r.client.post("/v1/stylize?style=udnie", content=body,
                                     headers={"content-type": "image/png"})
        assert time.monotonic() - started < 1.0
        assert answer.status_code == 413
        error = answer.json()["error"]
        assert error["code"] == "too_slow"
        assert "64x64" in error["message"] and "about 8 s" in error["message"]
        assert "5 s limit" in error["message"]
        assert await r.metric("service_rejections_total", reason="too_slow") == 1
        model.policy = measured({1: 1.0})
        fast = await r.client.post("/v1/stylize?style=udnie", content=body,
                                   headers={"content-type": "image/png"})
        assert fast.status_code == 200
        # strength 0 runs no network: nothing to predict
        model.policy = measured({1: 2000.0})
        plain = await r.client.post("/v1/stylize?style=udnie&strength=0", content=body,
                                    headers={"content-type": "image/png"})
        assert plain.status_code == 200


async def test_work_that_waited_too_long_gets_503_with_retry_after(make_settings):
    settings = make_settings(models=["udnie"], cache_bytes=0, request_timeout_s=5)
    async with running(settings) as r:
        (model,) = r.services.registry.models()
        model.policy = measured({1: 1000.0})                      # 4 s for 64x64: fits in 5
        inference = r.services.inference
        with pytest.raises(errors.WouldMissDeadline) as e:        # admitted 2 s ago
            inference._admit_by_time(model, 64, 64, time.monotonic() + 3, time_limit_s=5)
        assert e.value.status == 503 and e.value.code == "would_miss_deadline"
        assert e.value.headers["Retry-After"] == "2"
        inference._admit_by_time(model, 64, 64, time.monotonic() + 4.5, time_limit_s=5)  # fits


def test_tiles_with_whole_image_statistics_cost_a_pass_per_norm_layer_more():
    from nets.style_net import StyleNet
    from nets.superres_net import SuperResNet
    from service.tiling import image_norm_passes

    # 3 down, 5 residual blocks of 2, 2 up: 15 instance norms, each measured by a pass that
    # stops at it (half a pass on average), then the pass that computes the output
    assert image_norm_passes(StyleNet(norm="instance")) == 1 + 15 / 2
    assert image_norm_passes(SuperResNet(4, norm="none")) == 1


async def test_tiled_work_with_image_statistics_is_predicted_with_its_extra_passes(
        make_settings):
    settings = make_settings(models=["udnie"], cache_bytes=0, request_timeout_s=2,
                             tile_threshold_pixels=64 * 64, tile_size=48, tile_overlap=8)
    async with running(settings) as r:
        (model,) = r.services.registry.models()
        model.policy = measured({1: 40.0})          # 40 ms per 32x32
        body = images.png(80, 80)                   # 2 x 2 tiles of 48: 96 x 96 computed
        refused = await r.client.post("/v1/stylize?style=udnie", content=body,
                                      headers={"content-type": "image/png"})
        # one pass over the tiles, 0.36 s, fits the 2 s; with the 15 measuring passes, 3.1 s
        assert refused.status_code == 413
        message = refused.json()["error"]["message"]
        assert "about 3 s" in message and "2 s limit" in message
        r.services.inference.tiling = dataclasses.replace(r.services.inference.tiling,
                                                          norm_stats="tile")
        admitted = await r.client.post("/v1/stylize?style=udnie", content=body,
                                       headers={"content-type": "image/png"})
        assert admitted.status_code == 200          # each tile its own statistics: one pass
