"""Tiled inference (service/tiling.py): the plan, the blending, memory bounded by the tile,
tiled against untiled output with shipped models, and big images through HTTP."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from model_store import SHIPPED_ROOT
from service.batcher import Batcher
from service.registry import LoadedModel, Registry
from service.settings import Settings
from service.tiling import ImageNorm, TilePlan, feather, run_tiled, run_tiled_async, starts
from tests.helpers import images
from tests.helpers.server import running

PNG = {"content-type": "image/png"}


def identity(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [t.copy() for t in tiles]


def upscale(factor: int):  # noqa: ANN201 - a run callable
    def run(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [t.repeat(factor, 0).repeat(factor, 1) for t in tiles]
    return run


def sky_over_city(height: int, width: int) -> np.ndarray:
    """A smooth sky over busy content, as in a photograph: tiles of it have very different
    statistics, which is what tiling an instance-norm network gets wrong without care."""
    img = images.pixels(width, height, seed=5).astype(np.float32)
    sky = int(height * 0.45)
    t = np.linspace(0, 1, sky, dtype=np.float32)[:, None, None]
    img[:sky] = (1 - t) * np.float32([70, 120, 200]) + t * np.float32([190, 215, 240])
    return img.astype(np.uint8)


def assert_no_seam(tiled: np.ndarray, untiled: np.ndarray) -> None:
    """No column or row of |tiled - untiled| stands out: each mean is under 3x the median
    column's (or under one grey level, below which nothing is visible)."""
    diff = np.abs(tiled.astype(np.float32) - untiled.astype(np.float32))
    for axis, name in ((0, "column"), (1, "row")):
        profile = diff.mean(axis=(axis, 2))
        limit = max(3 * float(np.median(profile)), 1.0)
        worst = int(profile.argmax())
        assert profile[worst] <= limit, f"{name} {worst}: {profile[worst]:.2f} > {limit:.2f}"


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.fixture(scope="module")
def shipped() -> Registry:
    registry = Registry(SHIPPED_ROOT, ["udnie", "sr_x4"], "cpu", "float32", policy="fixed")
    registry.load_all()
    return registry


# -- the plan and the weights -------------------------------------------------------------------


@pytest.mark.parametrize(("length", "tile", "overlap"),
                         [(100, 100, 10), (101, 100, 10), (1000, 512, 32), (4096, 512, 32),
                          (768, 384, 128), (97, 24, 8)])
def test_tiles_cover_the_length_with_at_least_the_overlap(length: int, tile: int,
                                                          overlap: int) -> None:
    offsets = starts(length, tile, overlap)
    side = min(tile, length)
    assert offsets[0] == 0 and offsets[-1] + side == length
    gaps = np.diff(offsets)
    assert (gaps > 0).all() and (side - gaps >= overlap).all()
    assert gaps.max() - gaps.min() <= 1 if len(gaps) else True   # evenly spread


def test_tile_must_exceed_twice_the_overlap() -> None:
    with pytest.raises(ValueError, match="twice the overlap"):
        starts(1000, 64, 32)


@pytest.mark.parametrize(("height", "width", "tile", "overlap", "factor"),
                         [(300, 200, 96, 16, 1), (64, 200, 48, 8, 4), (1000, 1000, 512, 32, 1)])
def test_weights_sum_to_one_and_ignore_the_tile_edges(height: int, width: int, tile: int,
                                                      overlap: int, factor: int) -> None:
    plan = TilePlan.make(height, width, tile=tile, overlap=overlap, factor=factor)
    f = factor
    total = np.zeros((height * f, width * f), np.float32)
    for i in range(len(plan)):
        row, col = divmod(i, len(plan.xs))
        y, x = plan.ys[row] * f, plan.xs[col] * f
        total[y:y + plan.tile_h * f, x:x + plan.tile_w * f] += plan.weight(i)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # an inner edge (the first pixels of the second tile) counts for next to nothing
    w = feather([0, 40], 64, 104, 16)[1]
    assert w[:4].max() < 0.01 and w[-1] == pytest.approx(1.0)


@pytest.mark.parametrize(("height", "width"), [(300, 200), (97, 131), (40, 40), (1, 500)])
def test_identity_network_gives_back_the_image_exactly(height: int, width: int) -> None:
    img = images.pixels(width, height, seed=height)
    out = run_tiled(img, identity, tile=48, overlap=12, batch_size=3)
    assert np.array_equal(out, img)


def test_upscaling_network_is_stitched_at_the_output_scale() -> None:
    img = images.pixels(90, 70, seed=2)
    out = run_tiled(img, upscale(4), tile=32, overlap=8, factor=4, batch_size=4)
    assert np.array_equal(out, img.repeat(4, 0).repeat(4, 1))


def test_4096_image_memory_is_bounded_by_the_tile_not_the_image() -> None:
    """The model never sees more than a batch of tiles, and the host holds the output plus a
    band about one tile tall (never a float copy of the whole image)."""
    side, tile, overlap, batch = 4096, 512, 32, 4
    img = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
    seen: list[tuple[int, ...]] = []

    def run(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        seen.append(np.stack(tiles).shape)
        return identity(tiles)

    tracemalloc.start()
    try:
        out = run_tiled(img, run, tile=tile, overlap=overlap, batch_size=batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, img)
    assert max(seen) == (batch, tile, tile, 3) and len(seen) == -(-81 // batch)  # 9 x 9 tiles
    output_bytes = img.nbytes
    band_bytes = tile * side * 3 * 4                   # float32 rows of one tile
    assert peak < output_bytes + 3 * band_bytes         # ~125 MiB; untiled float: > 250 MiB
    assert peak < 2.5 * output_bytes


# -- the async driver (what the service uses with the batcher) ----------------------------------


async def test_async_driver_keeps_a_window_of_tiles_in_flight() -> None:
    img = images.pixels(200, 150, seed=3)
    in_flight, most = 0, 0

    async def submit(tile: np.ndarray) -> np.ndarray:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return tile.copy()

    out = await run_tiled_async(img, submit, tile=48, overlap=8, window=5)
    assert np.array_equal(out, img)
    assert most == 5


async def test_cancelling_the_async_driver_cancels_its_tiles() -> None:
    img = images.pixels(200, 150, seed=4)
    started, cancelled = 0, 0

    async def submit(tile: np.ndarray) -> np.ndarray:
        nonlocal started, cancelled
        started += 1
        try:
            await asyncio.sleep(0 if started == 1 else 60)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return tile

    task = asyncio.ensure_future(run_tiled_async(img, submit, tile=48, overlap=8, window=4))
    while started < 5:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (started, cancelled) == (5, 4)


# -- tiled against untiled, shipped models ------------------------------------------------------


def test_superres_tiles_match_untiled(shipped: Registry) -> None:
    """sr_x4 has no normalisation: overlapping tiles are exact but for rounding."""
    model = shipped.get("sr_x4")
    assert model is not None
    img = images.pixels(96, 80, seed=7)
    untiled = model.run([img])[0]
    tiled = run_tiled(img, model.run, tile=48, overlap=16, factor=4, batch_size=4)
    assert tiled.shape == untiled.shape == (320, 384, 3)
    assert mean_abs_diff(tiled, untiled) < 0.05
    assert_no_seam(tiled, untiled)


def test_style_tiles_with_whole_image_statistics_match_untiled(shipped: Registry) -> None:
    """udnie (instance norm) on a 320x320 sky-over-city image in 2x2 tiles of 192: measured
    mean 0.08 grey levels from untiled; each tile normalised on its own is ~23 levels off."""
    model = shipped.get("udnie")
    assert model is not None
    img = sky_over_city(320, 320)
    untiled = model.run([img])[0]
    net = ImageNorm(model.module, model.device, model.dtype)
    tiled = net.run_tiled(img, tile=192, overlap=64, batch_size=4)
    assert mean_abs_diff(tiled, untiled) < 2
    assert_no_seam(tiled, untiled)
    per_tile = run_tiled(img, model.run, tile=192, overlap=64, batch_size=4)
    assert mean_abs_diff(per_tile, untiled) > 10


# -- whole-image statistics yield to normal requests -------------------------------------------


class Logged(nn.Module):
    """A tiny instance-norm network that logs each forward pass (in a class attribute, so the
    copy that `ImageNorm` makes logs into the same list)."""

    log: ClassVar[list[str]] = []

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = nn.InstanceNorm2d(3, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Logged.log.append("pass")
        return torch.sigmoid(self.norm(self.conv(x)))


def logged_image_norm() -> tuple[ImageNorm, list[str]]:
    torch.manual_seed(0)
    Logged.log = []
    return ImageNorm(Logged(), torch.device("cpu"), torch.float32), Logged.log


def test_image_norm_waits_before_each_pass_while_normal_work_is_pending() -> None:
    net, log = logged_image_norm()
    answers = iter([True, True, True])        # busy three times, then idle for good

    def busy() -> bool:
        answer = next(answers, False)
        log.append("busy" if answer else "idle")
        return answer

    img = images.pixels(100, 90, seed=2)
    out = net.run_tiled(img, tile=48, overlap=16, batch_size=4, busy=busy, yield_s=60)
    assert log[:5] == ["busy", "busy", "busy", "idle", "pass"]
    passes = [i for i, entry in enumerate(log) if entry == "pass"]
    assert len(passes) == 2 * 3        # 9 tiles by 4: 3 passes measuring, 3 running
    assert all(log[i - 1] == "idle" for i in passes)    # every pass asked first
    assert np.array_equal(out, net.run_tiled(img, tile=48, overlap=16, batch_size=4))


def test_image_norm_progresses_under_a_steady_stream_of_normal_work() -> None:
    """Always busy: each pass waits at most `yield_s`, then runs anyway."""
    net, log = logged_image_norm()
    img = images.pixels(100, 90, seed=2)
    started = time.monotonic()
    out = net.run_tiled(img, tile=48, overlap=16, batch_size=4, busy=lambda: True,
                        yield_s=0.02)
    assert time.monotonic() - started >= 6 * 0.02
    assert log.count("pass") == 6
    assert np.array_equal(out, net.run_tiled(img, tile=48, overlap=16, batch_size=4))


# -- through HTTP -------------------------------------------------------------------------------


class Recorder(nn.Module):
    """Wraps a network and records every input's shape (in a class attribute, so the copy that
    `ImageNorm` makes records into the same list)."""

    shapes: ClassVar[list[tuple[int, ...]]] = []

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Recorder.shapes.append(tuple(x.shape))
        return self.inner(x)


def record(model: LoadedModel) -> list[tuple[int, ...]]:
    Recorder.shapes = []
    model.module = Recorder(model.module)
    return Recorder.shapes


def priorities(batcher: Batcher, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The `low` flag of every request submitted to `batcher` from now on."""
    flags: list[bool] = []
    submit = batcher.submit

    async def spy(*args: Any, low: bool = False, **kwargs: Any) -> Any:
        flags.append(low)
        return await submit(*args, low=low, **kwargs)

    monkeypatch.setattr(batcher, "submit", spy)
    return flags


TILED = dict(tile_threshold_pixels=64 * 64, tile_size=48, tile_overlap=16,
             superres_tile_size=24, superres_tile_overlap=8)


@pytest.mark.parametrize("norm_stats", ["image", "tile"])
async def test_big_style_image_runs_in_tiles(make_settings, norm_stats: str,  # noqa: ANN001
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(**TILED, tile_norm_stats=norm_stats)
    async with running(settings) as api:
        shapes = record(api.services.registry.get("udnie"))
        low = priorities(api.services.batcher, monkeypatch)
        resp = await api.client.post("/v1/stylize?style=udnie", content=images.png(100, 90),
                                     headers=PNG)
        assert resp.status_code == 200, resp.text
        assert images.decode(resp.content).size == (100, 90)
        assert "compute;dur=" in resp.headers["server-timing"]
        sides = {s[2:] for s in shapes}
        assert sides == {(48, 48)}                      # never the whole 90x100 image
        # 'image': 15 measuring passes + 1 over 3x3 tiles; 'tile': the tiles, batched together
        # by the batcher (the first alone, then up to max_batch_size at once)
        assert sum(s[0] for s in shapes) == (16 if norm_stats == "image" else 1) * 9
        assert max(s[0] for s in shapes) > 1
        # 'tile': 9 background requests to the batcher; 'image': its own thread, none
        assert low == ([] if norm_stats == "image" else [True] * 9)


async def test_small_image_is_not_tiled(make_settings,  # noqa: ANN001
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(make_settings(**TILED)) as api:
        shapes = record(api.services.registry.get("udnie"))
        low = priorities(api.services.batcher, monkeypatch)
        resp = await api.client.post("/v1/stylize?style=udnie", content=images.png(60, 60),
                                     headers=PNG)
        assert resp.status_code == 200
        assert shapes == [(1, 3, 60, 60)]
        assert low == [False]                           # a normal request


async def test_big_superres_output_runs_in_tiles(make_settings) -> None:  # noqa: ANN001
    async with running(make_settings(**TILED)) as api:
        shapes = record(api.services.registry.get("sr4"))
        resp = await api.client.post("/v1/superres?factor=4", content=images.png(40, 30),
                                     headers=PNG)
        assert resp.status_code == 200, resp.text
        assert images.decode(resp.content).size == (160, 120)
        assert {s[2:] for s in shapes} == {(24, 24)}


async def test_shipped_superres_tiles_go_through_the_batcher() -> None:
    """A network without instance norm needs no statistics: its tiles are ordinary batcher
    requests, batched together, and the stitched output equals the untiled one."""
    settings = Settings(model_store=SHIPPED_ROOT, models=["sr_x4"], device="cpu",
                        dtype="float32", redis_url=None, batch_policy="fixed", max_wait_ms=5,
                        **TILED)
    async with running(settings) as api:
        model = api.services.registry.get("sr_x4")
        data = images.png(56, 40, seed=9)
        untiled = model.run([np.asarray(images.decode(data).convert("RGB"))])[0]
        shapes = record(model)
        resp = await api.client.post("/v1/superres?factor=4", content=data, headers=PNG)
        assert resp.status_code == 200, resp.text
        tiled = np.asarray(images.decode(resp.content))
        assert tiled.shape == untiled.shape == (160, 224, 3)
        assert mean_abs_diff(tiled, untiled) < 0.05
        assert {s[2:] for s in shapes} == {(24, 24)}
        assert sum(s[0] for s in shapes) == 6 and len(shapes) < 6     # 2 x 3 tiles, batched
        assert await api.metric("service_batch_size_count", model="sr_x4") == len(shapes)
