"""Small parts on their own: settings, cache, single flight, imaging, content negotiation."""

from __future__ import annotations

import asyncio
import inspect
import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.routing import APIRoute
from PIL import Image

from bench.server import free_port
from model_store import SHIPPED_ROOT
from service import imaging
from service.cache import MemoryCache, RedisCache, cache_key, make_cache
from service.deps import negotiate
from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.lifecycle import build_services, connect_redis
from service.metrics import Metrics
from service.routes import transform
from service.settings import PILLOW_MAX_PIXELS, Settings, get_settings
from service.singleflight import SingleFlight
from tests.helpers import images

# -- settings ----------------------------------------------------------------------------------


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "SERVICE_REDIS_URL", "SERVICE_MODELS", "SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = get_settings()
    assert s.model_store == SHIPPED_ROOT and s.models == [] and s.port == 8000
    assert s.device == "auto" and s.dtype == "auto" and s.redis_url is None

    monkeypatch.setenv("SERVICE_MODELS", "udnie, candy")
    monkeypatch.setenv("SERVICE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SERVICE_PORT", "9000")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    s = get_settings(port=9100)                      # a command-line flag wins
    assert s.models == ["udnie", "candy"] and s.max_batch_size == 16 and s.port == 9100
    assert s.redis_url == "redis://cache:6379/0"
    monkeypatch.setenv("SERVICE_REDIS_URL", "redis://other:6379/1")
    assert get_settings().redis_url == "redis://other:6379/1"


def test_settings_reject_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_DEVICE", "tpu")
    with pytest.raises(ValueError, match="device"):
        get_settings()


# -- cache -------------------------------------------------------------------------------------


def test_cache_key_is_a_hash_of_everything_that_matters() -> None:
    key = cache_key("a" * 64, "b" * 64, {"format": "png"})
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == cache_key("a" * 64, "b" * 64, {"format": "png"})
    assert key != cache_key("a" * 64, "b" * 64, {"format": "jpeg"})
    assert key != cache_key("a" * 64, "c" * 64, {"format": "png"})


async def test_memory_cache_is_an_lru_bounded_in_bytes() -> None:
    metrics = Metrics()
    cache = MemoryCache(max_bytes=100, max_value_bytes=60, metrics=metrics)
    await cache.set("a", b"x" * 40)
    await cache.set("b", b"y" * 40)
    assert await cache.get("a") == b"x" * 40        # a is now the most recent
    await cache.set("c", b"z" * 40)                  # evicts b
    assert await cache.get("b") is None
    assert await cache.get("a") is not None and await cache.get("c") is not None
    assert cache.size_bytes == 80
    await cache.set("big", b"w" * 61)                # over the value cap: not stored
    assert await cache.get("big") is None and cache.size_bytes == 80


async def test_redis_errors_are_misses_and_counted() -> None:
    metrics = Metrics()
    cache = RedisCache(connect_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5),
                       ttl_s=10, max_value_bytes=100, timeout_s=0.5, prefix="t:", metrics=metrics)
    started = time.monotonic()
    assert await cache.get("k") is None
    await cache.set("k", b"v")
    assert time.monotonic() - started < 5
    assert metrics.cache_errors.labels(backend="redis")._value.get() == 2
    await cache.close()
    await cache.redis.aclose()    # the client is its builder's to close


def test_make_cache_picks_the_backend() -> None:
    metrics = Metrics()
    common = dict(cache_ttl_s=1, cache_max_value_bytes=1, redis_timeout_s=0.1,
                  redis_key_prefix="p:", metrics=metrics)
    assert make_cache(redis=None, cache_bytes=10, **common).backend == "memory"
    assert make_cache(redis=None, cache_bytes=0, **common).backend == "none"
    assert make_cache(redis=connect_redis("redis://x:1", 0.1), cache_bytes=10,
                      **common).backend == "redis"


# -- single flight -----------------------------------------------------------------------------


async def test_single_flight_shares_and_survives_one_caller_leaving() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return 42

    a = asyncio.create_task(flights.do("k", work))
    b = asyncio.create_task(flights.do("k", work))
    c = asyncio.create_task(flights.do("k", work))
    await asyncio.sleep(0)
    assert flights.waiting() == 3
    a.cancel()                                       # one caller leaves: the rest still wait
    await asyncio.sleep(0)
    release.set()
    assert await b == (42, True) and await c == (42, True)
    assert runs == 1 and len(flights) == 0


async def test_single_flight_cancels_when_everyone_left_and_shares_errors() -> None:
    flights: SingleFlight[int] = SingleFlight()
    cancelled = asyncio.Event()

    async def forever() -> int:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return 0

    only = asyncio.create_task(flights.do("k", forever))
    await asyncio.sleep(0)
    only.cancel()
    await asyncio.wait_for(cancelled.wait(), 5)

    async def fail() -> int:
        raise ValueError("bad input")

    results = await asyncio.gather(flights.do("e", fail), flights.do("e", fail),
                                   return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


# -- imaging -----------------------------------------------------------------------------------


def test_decode_modes_and_orientation() -> None:
    gray = imaging.decode(images.png(8, 6, mode="L"), max_pixels=100)
    assert gray.rgb.shape == (6, 8, 3) and gray.alpha is None
    assert (gray.rgb[..., 0] == gray.rgb[..., 2]).all()
    rgba = imaging.decode(images.png(8, 6, mode="RGBA"), max_pixels=100)
    assert rgba.alpha is not None and rgba.alpha.shape == (6, 8)
    palette = imaging.decode(images.png(8, 6, mode="P"), max_pixels=100)
    assert palette.alpha is not None
    cmyk = imaging.decode(images.jpeg(8, 6, mode="CMYK"), max_pixels=100)
    assert cmyk.rgb.shape == (6, 8, 3)
    rotated = imaging.decode(images.jpeg(8, 6, orientation=8), max_pixels=100)
    assert rotated.rgb.shape == (8, 6, 3)


@pytest.mark.parametrize(("data", "error"), [
    (b"", InvalidImage),
    (images.TEXT, InvalidImage),
    (images.truncated(images.png(64, 64)), InvalidImage),
    (images.png_claiming(100_000, 100_000), ImageTooLarge),
    (images.animated_gif(), UnsupportedMediaType),
])
def test_decode_refuses(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        imaging.decode(data, max_pixels=1_000_000)


def test_output_limit_counts_the_scale() -> None:
    with pytest.raises(ImageTooLarge, match="output"):
        imaging.decode(images.png(100, 100), max_pixels=10_000, scale=8,
                       max_output_pixels=100_000)


def test_decoded_bytes_limit_is_an_argument() -> None:
    """1, 2 or 4 bytes a pixel by mode; unset, 4 bytes per allowed pixel. An argument, not a
    process-wide setting: calls with different limits do not affect each other."""
    rgb, gray = images.png(40, 20), images.png(40, 20, mode="L")     # 3200 and 800 bytes
    with pytest.raises(ImageTooLarge, match="decodes to 3200 bytes; the limit is 3199"):
        imaging.decode(rgb, max_pixels=800, max_decoded_bytes=3199)
    assert imaging.decode(gray, max_pixels=800, max_decoded_bytes=800).rgb.shape == (20, 40, 3)
    assert imaging.decode(rgb, max_pixels=800).rgb.shape == (20, 40, 3)   # 4 x 800 bytes
    with pytest.raises(ImageTooLarge, match="the limit is 799"):
        imaging.decode(gray, max_pixels=800, max_decoded_bytes=799)


def test_max_pixels_stays_under_pillows_own_limit() -> None:
    """Pillow's decompression-bomb check is left at its default, behind ours."""
    assert PILLOW_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match="max_pixels"):
        Settings(max_pixels=PILLOW_MAX_PIXELS + 1)


def test_pad_and_encode() -> None:
    rgb = np.zeros((3, 5, 3), np.uint8)
    assert imaging.pad_to(rgb, 16).shape == (16, 16, 3)
    assert imaging.pad_to(np.zeros((20, 20, 3), np.uint8), 16).shape == (20, 20, 3)
    alpha = np.full((3, 5), 128, np.uint8)
    assert images.decode(imaging.encode(rgb, alpha, "png", 90)).mode == "RGBA"
    assert images.decode(imaging.encode(rgb, alpha, "webp", 90)).mode == "RGBA"
    jpeg = images.decode(imaging.encode(rgb, alpha, "jpeg", 90))
    assert jpeg.mode == "RGB" and 100 < np.asarray(jpeg).mean() < 160   # black over white


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (1, 40), (40, 1)])
@pytest.mark.parametrize("band_bytes", [4 << 20, 300])     # one band; bands of 1 to 2 rows
def test_png_output_is_lossless(shape: tuple[int, int], band_bytes: int, monkeypatch) -> None:
    monkeypatch.setattr(imaging, "_PNG_BAND_BYTES", band_bytes)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    alpha = rng.integers(1, 256, shape, dtype=np.uint8)
    body = imaging.encode(rgb, None, "png", 90)
    Image.open(io.BytesIO(body)).verify()         # signature, chunk CRCs
    assert np.array_equal(np.asarray(images.decode(body)), rgb)
    rgba = np.asarray(images.decode(imaging.encode(rgb, alpha, "png", 90)))
    assert np.array_equal(rgba[..., :3], rgb) and np.array_equal(rgba[..., 3], alpha)


@pytest.mark.parametrize(("accept", "fmt"), [
    (None, "png"), ("*/*", "png"), ("image/jpeg", "jpeg"), ("text/html", "png"),
    ("image/png;q=0.5, image/webp", "webp"), ("image/webp;q=0, image/jpeg;q=0.2", "jpeg"),
    ("image/*;q=0.8, image/jpeg;q=0.9", "jpeg"), ("image/jpeg;q=oops", "png"),
])
def test_accept_negotiation(accept: str | None, fmt: str) -> None:
    assert negotiate(accept) == fmt


def test_every_setting_is_documented() -> None:
    readme = (Path(__file__).resolve().parents[2] / "service" / "README.md").read_text()
    missing = [f"SERVICE_{name.upper()}" for name in Settings.model_fields
               if f"`SERVICE_{name.upper()}`" not in readme]
    assert not missing, f"service/README.md does not document {missing}"


def test_settings_class_is_the_contract() -> None:
    fields = set(Settings.model_fields)
    assert {"model_store", "models", "device", "dtype", "max_batch_size", "max_wait_ms",
            "max_batch_pixels", "queue_limit", "request_timeout_s", "max_body_bytes",
            "max_pixels", "cache_bytes", "cache_ttl_s", "cache_max_value_bytes", "redis_url",
            "drain_timeout_s", "host", "port", "log_level"} <= fields


def test_transform_routes_have_no_dependency_for_the_thread_pool() -> None:
    """FastAPI runs a plain `def` dependency on its thread pool: a thread hop on every
    request (service/deps.py)."""
    def calls(dependant):  # noqa: ANN001, ANN202
        for d in dependant.dependencies:
            yield d.call
            yield from calls(d)

    routes = [r for r in transform.router.routes if isinstance(r, APIRoute)]
    assert {r.path for r in routes} == {"/v1/stylize", "/v1/superres"}
    for route in routes:
        found = list(calls(route.dependant))
        assert len(found) >= 4
        assert [c.__name__ for c in found if not (inspect.iscoroutinefunction(c)
                                                  or inspect.isasyncgenfunction(c))] == []


# -- building the parts ------------------------------------------------------------------------


async def test_the_parts_are_built_complete_with_one_redis_client_closed_once(
        make_settings) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0", rate_limit_per_s=5,
                             max_decoded_bytes=12345, tile_size=256, tile_overlap=32)
    services = build_services(settings)      # nothing connects yet
    assert services.redis is not None
    assert services.cache.redis is services.redis and services.limiter.redis is services.redis
    assert services.inference.max_decoded_bytes == 12345
    assert services.inference.tiling.tile_for(1) == (256, 32)
    closed: list[int] = []
    close = services.redis.aclose

    async def counted_close() -> None:
        closed.append(1)
        await close()

    services.redis.aclose = counted_close
    await services.stop()
    assert closed == [1]
