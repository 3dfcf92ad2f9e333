"""One transform request end to end: cache, single flight, decode, batch, encode.

Decoding and encoding run in a thread pool and the forward pass on the batcher's worker, so
the event loop only schedules. Routes call `Inference.transform`; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from service import batcher as batching
from service import errors, imaging
from service.cache import Cache, cache_key
from service.metrics import Metrics
from service.registry import MIN_SIDE_PX, LoadedModel, is_oom
from service.singleflight import SingleFlight

PIPELINE_VERSION = 1  # bump when decoding/encoding changes the bytes, to invalidate caches


@dataclass(frozen=True)
class OutputOptions:
    format: str    # png | jpeg | webp
    quality: int   # 1..100, lossy formats only

    @property
    def content_type(self) -> str:
        return imaging.OUTPUT_CONTENT_TYPES[self.format]


@dataclass(frozen=True)
class Outcome:
    body: bytes
    content_type: str
    cache: str                                  # "hit" or "miss"
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Prepared:
    pixels: np.ndarray          # padded to the network's minimum size
    alpha: np.ndarray | None
    height: int
    width: int


class Inference:
    def __init__(self, *, batcher: batching.Batcher[tuple[str, int, int], np.ndarray, np.ndarray],
                 cache: Cache, metrics: Metrics, codec_pool: ThreadPoolExecutor,
                 max_pixels: int, max_output_pixels: int) -> None:
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.codec_pool = codec_pool
        self.max_pixels = max_pixels
        self.max_output_pixels = max_output_pixels
        self.flights: SingleFlight[tuple[bytes, dict[str, float]]] = SingleFlight()

    async def transform(self, model: LoadedModel, data: bytes, options: OutputOptions, *,
                        deadline: float) -> Outcome:
        """The encoded output for `data`; identical concurrent requests compute once."""
        key = cache_key(hashlib.sha256(data).hexdigest(), model.digest, {
            "model": model.name, "dtype": model.dtype_name, "format": options.format,
            "quality": options.quality if options.format != "png" else None,
            "pipeline": PIPELINE_VERSION})
        cached = await self.cache.get(key)
        if cached is not None:
            return Outcome(cached, options.content_type, "hit")
        (body, timings), shared = await self.flights.do(
            key, lambda: self._compute(key, model, data, options, deadline))
        if shared:
            self.metrics.singleflight_shared.inc()
        return Outcome(body, options.content_type, "hit" if shared else "miss", timings)

    async def _compute(self, key: str, model: LoadedModel, data: bytes, options: OutputOptions,
                       deadline: float) -> tuple[bytes, dict[str, float]]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        prepared = await loop.run_in_executor(self.codec_pool, partial(
            _prepare, data, max_pixels=self.max_pixels, scale=model.factor,
            max_output_pixels=self.max_output_pixels))
        decode_s = time.monotonic() - started
        self.metrics.decode.observe(decode_s)

        h, w = prepared.pixels.shape[:2]
        try:
            done = await self.batcher.submit((model.name, h, w), prepared.pixels,
                                             deadline=deadline, cost=h * w)
        except batching.QueueFull as e:
            raise errors.QueueFull(f"the server is busy: {e}; retry later",
                                   headers={"Retry-After": "1"}) from None
        except batching.DeadlineExceeded:
            raise errors.DeadlineExceeded("the request timed out before its compute started"
                                          ) from None
        except batching.BatcherClosed:
            raise errors.ShuttingDown("the server is shutting down",
                                      headers={"Retry-After": "1"}) from None
        except Exception as e:
            if is_oom(e):
                raise errors.OutOfMemory("the device ran out of memory for this image; retry "
                                         "later or send a smaller one",
                                         headers={"Retry-After": "1"}) from None
            raise errors.ComputeFailed(f"model {model.name} failed: {type(e).__name__}: {e}"
                                       ) from e

        f = model.factor
        pixels = done.value[: prepared.height * f, : prepared.width * f]
        started = time.monotonic()
        body = await loop.run_in_executor(self.codec_pool, partial(
            imaging.encode, pixels, prepared.alpha, options.format, options.quality))
        encode_s = time.monotonic() - started
        self.metrics.encode.observe(encode_s)
        await self.cache.set(key, body)
        return body, {"decode": decode_s, "queue": done.queue_s, "compute": done.compute_s,
                      "encode": encode_s}


def _prepare(data: bytes, *, max_pixels: int, scale: int, max_output_pixels: int) -> _Prepared:
    """Decode and pad (runs in the codec pool)."""
    decoded = imaging.decode(data, max_pixels=max_pixels, scale=scale,
                             max_output_pixels=max_output_pixels)
    h, w = decoded.rgb.shape[:2]
    return _Prepared(imaging.pad_to(decoded.rgb, MIN_SIDE_PX), decoded.alpha, h, w)
