"""One transform request end to end: cache, single flight, decode, batch, encode.

Decoding and encoding run in a thread pool and the forward pass on the batcher's worker, so
the event loop only schedules. Images whose output is over `TileConfig.threshold_pixels` run in
tiles (service/tiling.py): through the batcher for networks without instance norm; for
instance-norm networks on a thread of their own, one image at a time, since their tiles need
the whole image's statistics, which the shared batched `run` cannot carry. Tiled jobs are
background work: their tiles queue at the batcher's low priority, and the instance-norm thread
steps aside before each pass while normal requests are pending. Style requests may
mix the output with the input (`StyleOptions`); on a multi-style network they bring a row of
style weights, which travels with the pixels through the batcher (and through the tiles) to
the forward pass. Routes call `Inference.transform`; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from service import admission, errors, execution, imaging
from service import batcher as batching
from service.activations import CPU_PASS_TENSORS
from service.cache import Cache, cache_key
from service.memory import MemoryBudget
from service.metrics import Metrics
from service.registry import MIN_SIDE_PX, LoadedModel, Payload, is_oom
from service.singleflight import SingleFlight
from service.tiling import (
    ImageNorm,
    Progress,
    TileConfig,
    has_instance_norm,
    image_norm_passes,
    run_tiled_async,
)

PIPELINE_VERSION = 5  # bump when decoding/encoding changes the bytes, to invalidate caches


@dataclass(frozen=True)
class OutputOptions:
    format: str    # png | jpeg | webp
    quality: int   # 1..100, lossy formats only

    @property
    def content_type(self) -> str:
        return imaging.OUTPUT_CONTENT_TYPES[self.format]


@dataclass(frozen=True)
class StyleOptions:
    """How much of the style to apply and whether to keep the input's colours (see
    `imaging.mix_style`); style models only."""

    strength: float = 1.0          # 0..1
    preserve_color: bool = False
    mix: tuple[float, ...] | None = None   # a multi-style network's style weights (its order)

    @property
    def is_plain(self) -> bool:
        """The network's output as it is."""
        return self.strength == 1.0 and not self.preserve_color


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
    def __init__(self, *, batcher: batching.Batcher[tuple[str, int, int], Payload, np.ndarray],
                 cache: Cache, metrics: Metrics, codec_pool: ThreadPoolExecutor,
                 max_pixels: int, max_output_pixels: int, max_decoded_bytes: int | None = None,
                 tiling: TileConfig | None = None, threads: int = 0,
                 time_limit_s: float = math.inf, memory: MemoryBudget | None = None) -> None:
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.codec_pool = codec_pool
        self.max_pixels = max_pixels
        self.max_output_pixels = max_output_pixels
        self.max_decoded_bytes = max_decoded_bytes   # None: 4 bytes per allowed pixel
        self.tiling = tiling    # None: never tile
        self.time_limit_s = time_limit_s   # a request predicted to compute longer: 413
        self.memory = memory or MemoryBudget(None)
        # Tiled instance-norm jobs: one thread, one image at a time, a network copy per model,
        # on `threads` CPU threads (0: what the thread starts with; see execution.use_threads).
        self._image_norm_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="image-norm",
            initializer=partial(execution.use_threads, threads) if threads else None)
        self._image_norms: dict[tuple[str, str], ImageNorm] = {}   # used on that thread only
        self.flights: SingleFlight[tuple[bytes, dict[str, float]]] = SingleFlight()

    async def transform(self, model: LoadedModel, data: bytes, options: OutputOptions, *,
                        deadline: float, style: StyleOptions | None = None,
                        time_limit_s: float | None = None,
                        progress: Progress | None = None) -> Outcome:
        """The encoded output for `data`; identical concurrent requests compute once (the
        first one's `progress` counts the tiles). `time_limit_s`: the longest predicted compute
        accepted (None: the service's request time limit; jobs have their own)."""
        style = style if model.task == "style" else None
        params: dict[str, object] = {
            "model": model.name, "dtype": model.dtype_name, "format": options.format,
            "quality": options.quality if options.format != "png" else None,
            "pipeline": PIPELINE_VERSION}
        if style is not None:
            params["style"] = [style.strength, style.preserve_color]
            if style.mix is not None:   # rounded by the caller: equal blends share an entry
                params["mix"] = list(style.mix)
        if self.tiling is not None:  # tiled outputs differ slightly with the tiling settings
            params["tiling"] = [self.tiling.threshold_pixels, *self.tiling.tile_for(model.factor),
                                self.memory.limit]   # which images tile depends on it too
        key = cache_key(hashlib.sha256(data).hexdigest(), model.digest, params)
        cached = await self.cache.get(key)
        if cached is not None:
            return Outcome(cached, options.content_type, "hit")
        (body, timings), shared = await self.flights.do(
            key, lambda: self._compute(key, model, data, options, deadline, style,
                                       time_limit_s, progress or Progress()))
        if shared:
            self.metrics.singleflight_shared.inc()
        return Outcome(body, options.content_type, "hit" if shared else "miss", timings)

    async def check(self, model: LoadedModel, data: bytes, *, time_limit_s: float,
                    style: StyleOptions | None = None) -> None:
        """Raise what `transform` would raise before computing whatever the wait: the image
        cannot be decoded, is over a size limit, would take longer than `time_limit_s`, or
        would never fit the memory budget (a job's checks at submission)."""
        prepared = await self._decode(model, data)
        h, w = prepared.pixels.shape[:2]
        runs = _runs(model, style)
        if runs:
            self._admit_by_time(model, h, w, math.inf, time_limit_s)
        self.memory.check(self.predicted_bytes(model, h, w, runs),
                          f"a {prepared.width}x{prepared.height} image on {model.name}")

    async def _decode(self, model: LoadedModel, data: bytes) -> _Prepared:
        """Decode and pad in the codec pool, after the header's checks."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        prepared = await loop.run_in_executor(self.codec_pool, partial(
            _prepare, data, max_pixels=self.max_pixels, scale=model.factor,
            max_output_pixels=self.max_output_pixels, max_decoded_bytes=self.max_decoded_bytes))
        self.metrics.decode.observe(time.monotonic() - started)
        return prepared

    async def _compute(self, key: str, model: LoadedModel, data: bytes, options: OutputOptions,
                       deadline: float, style: StyleOptions | None, time_limit_s: float | None,
                       progress: Progress) -> tuple[bytes, dict[str, float]]:
        started = time.monotonic()
        prepared = await self._decode(model, data)
        decode_s = time.monotonic() - started

        h, w = prepared.pixels.shape[:2]
        runs = _runs(model, style)
        if runs:
            self._admit_by_time(model, h, w, deadline, time_limit_s or self.time_limit_s)
        async with self.memory.reserve(self.predicted_bytes(model, h, w, runs), deadline,
                                       f"a {prepared.width}x{prepared.height} image on "
                                       f"{model.name}"):
            body, timings = await self._run_and_encode(model, prepared, options, deadline,
                                                       style if runs else None, runs, progress)
        await self.cache.set(key, body)
        timings = {"decode": decode_s, **timings}
        return body, timings

    async def _run_and_encode(self, model: LoadedModel, prepared: _Prepared,
                              options: OutputOptions, deadline: float,
                              style: StyleOptions | None, runs: bool, progress: Progress
                              ) -> tuple[bytes, dict[str, float]]:
        loop = asyncio.get_running_loop()
        h, w = prepared.pixels.shape[:2]
        f = model.factor
        timings: dict[str, float] = {}
        mix = (np.asarray(style.mix, np.float32)
               if style is not None and style.mix is not None else None)
        if not runs:
            output = prepared.pixels    # nothing of the style: the network need not run
        elif self._tiled(model, h, w):
            assert self.tiling is not None
            if self._image_norm(model):
                output = await self._run_tiled_image_norm(model, prepared.pixels, mix,
                                                          deadline, timings, progress)
            else:
                output = await self._run_tiled(model, prepared.pixels, mix, deadline, timings,
                                               progress)
        else:
            done = await self._submit(model, prepared.pixels, mix, deadline)
            output = done.value
            timings.update(queue=done.queue_s, compute=done.compute_s)
            progress.done = progress.total = 1

        pixels = output[: prepared.height * f, : prepared.width * f]
        content = prepared.pixels[: prepared.height, : prepared.width]
        started = time.monotonic()
        body = await loop.run_in_executor(self.codec_pool, partial(
            _finish, pixels, content, prepared.alpha, options, style))
        timings["encode"] = time.monotonic() - started
        self.metrics.encode.observe(timings["encode"])
        return body, timings

    def _network_bytes(self, model: LoadedModel, height: int, width: int) -> int:
        """Host memory of one pass over a (height, width) input: its float input and output
        and, on the CPU, its intermediates."""
        f = model.factor
        tensors = 4 * 3 * height * width * (1 + f * f)
        if model.device.type == "cpu" and model.activations is not None:
            tensors += int(CPU_PASS_TENSORS * model.activations.per_image(height, width)
                           * model.dtype.itemsize)
        return tensors

    def _tiled(self, model: LoadedModel, height: int, width: int) -> bool:
        """Whether an image runs in tiles: its output is over the tiling threshold, or it is
        larger than a tile and one pass over it would hold more than half the memory budget."""
        if self.tiling is None:
            return False
        if self.tiling.applies(height, width, model.factor):
            return True
        limit = self.memory.limit
        return (limit is not None and max(height, width) > self.tiling.tile_for(model.factor)[0]
                and self._network_bytes(model, height, width) > limit // 2)

    def _image_norm(self, model: LoadedModel) -> bool:
        """Whether its tiles run with the whole image's instance-norm statistics."""
        return (self.tiling is not None and self.tiling.norm_stats == "image"
                and has_instance_norm(model.module))

    def predicted_bytes(self, model: LoadedModel, height: int, width: int, runs: bool) -> int:
        """Host memory a request holds from its decode to its encoded answer: the input, the
        network's tensors for the image or for one batch of tiles with the stitcher's band,
        the output, and the encoder's copy."""
        f = 1 if not runs else model.factor
        image, output = height * width * 3, height * width * f * f * 3
        network = partial(self._network_bytes, model)
        if not runs:
            compute = 0
        elif self._tiled(model, height, width):
            assert self.tiling is not None
            size, _ = self.tiling.tile_for(f)
            th, tw = min(size, height), min(size, width)
            band = 2 * 4 * 3 * th * f * width * f         # a row of tiles, and its copy
            batch = min(self.tiling.tiles_per_batch(th, tw),
                        self.batcher.limit((model.name, th, tw)))
            compute = batch * network(th, tw) + band
        else:
            compute = network(height, width)
        return image + compute + 2 * output

    def _admit_by_time(self, model: LoadedModel, height: int, width: int,
                       deadline: float, time_limit_s: float) -> None:
        """Refuse at once what the measured speed says cannot finish in time: 413 when the
        compute alone is over the time limit, 503 with Retry-After when the wait so far
        leaves too little of it."""
        tiled = self._tiled(model, height, width)
        pixels = (self.tiling.computed_pixels(height, width, model.factor, tiled)
                  if self.tiling is not None else height * width)
        predicted = model.predicted_s(height, width, pixels)
        if predicted is None:
            return
        if tiled and self._image_norm(model):
            predicted *= image_norm_passes(model.module)
        if predicted > time_limit_s:
            raise errors.TooSlow(
                f"a {width}x{height} image takes about {predicted:.0f} s on {model.name} on "
                f"this server ({model.device.type}), over its {time_limit_s:g} s limit; "
                "send a smaller image")
        left = deadline - time.monotonic()
        if predicted > left:
            raise errors.WouldMissDeadline(
                f"about {predicted:.1f} s of compute is needed and {max(0.0, left):.1f} s of "
                "this request's time is left; retry later",
                headers={"Retry-After": str(max(1, math.ceil(predicted - left)))})

    async def _run_tiled(self, model: LoadedModel, pixels: np.ndarray, mix: np.ndarray | None,
                         deadline: float, timings: dict[str, float], progress: Progress
                         ) -> np.ndarray:
        """`pixels` through the batcher tile by tile, at low priority (small requests go
        first). The deadline bounds the wait of the first tile only: once the computation has
        started, the request is not abandoned."""
        assert self.tiling is not None
        size, overlap = self.tiling.tile_for(model.factor)
        started = time.monotonic()
        queue_s: float | None = None   # the first tile's wait; run_tiled_async awaits it alone

        async def submit(tile: np.ndarray) -> np.ndarray:
            nonlocal queue_s
            done = await self._submit(model, tile, mix,
                                      deadline if queue_s is None else math.inf, low=True)
            if queue_s is None:
                queue_s = done.queue_s
            return done.value

        output = await run_tiled_async(pixels, submit, tile=size, overlap=overlap,
                                       factor=model.factor, window=self.tiling.batch_size,
                                       executor=self.codec_pool, progress=progress)
        assert queue_s is not None
        timings.update(queue=queue_s, compute=time.monotonic() - started - queue_s)
        return output

    async def _run_tiled_image_norm(self, model: LoadedModel, pixels: np.ndarray,
                                    mix: np.ndarray | None, deadline: float,
                                    timings: dict[str, float], progress: Progress
                                    ) -> np.ndarray:
        """`pixels` in tiles with the whole image's instance-norm statistics (tiling.ImageNorm)
        on the image-norm thread. The deadline bounds the wait for that thread; a client that
        goes away stops the job before its next forward pass."""
        assert self.tiling is not None
        size, overlap = self.tiling.tile_for(model.factor)
        tile_h, tile_w = min(size, pixels.shape[0]), min(size, pixels.shape[1])
        batch_size = self.tiling.tiles_per_batch(tile_h, tile_w)
        stop = threading.Event()
        queued_at = time.monotonic()

        def job() -> tuple[np.ndarray, float]:
            started = time.monotonic()
            if started >= deadline:
                raise batching.DeadlineExceeded("the deadline passed while the image waited")
            key = (model.name, model.digest)
            if key not in self._image_norms:
                self._image_norms[key] = ImageNorm(model.module, model.device, model.dtype)
            output = self._image_norms[key].run_tiled(
                pixels, tile=size, overlap=overlap, factor=model.factor, batch_size=batch_size,
                should_stop=stop.is_set, busy=lambda: self.batcher.normal_pending, mix=mix,
                progress=progress)
            return output, started

        loop = asyncio.get_running_loop()
        try:
            output, started = await loop.run_in_executor(self._image_norm_pool, job)
        except asyncio.CancelledError:
            stop.set()
            raise
        except Exception as e:
            raise _service_error(model, e) from (None if _is_expected(e) else e)
        timings.update(queue=started - queued_at, compute=time.monotonic() - started)
        return output

    def close(self) -> None:
        """Stop the image-norm thread (a job still running finishes on its own)."""
        self._image_norm_pool.shutdown(wait=False, cancel_futures=True)

    async def _submit(self, model: LoadedModel, pixels: np.ndarray, mix: np.ndarray | None,
                      deadline: float, low: bool = False) -> batching.Done[np.ndarray]:
        """One image (or tile: `low` priority) through the batcher; its errors become service
        errors. The key never holds the style weights: different styles of one network share a
        batch."""
        h, w = pixels.shape[:2]
        try:
            return await self.batcher.submit((model.name, h, w), (pixels, mix),
                                             deadline=deadline, cost=h * w, low=low)
        except Exception as e:
            raise _service_error(model, e) from (None if _is_expected(e) else e)


def _runs(model: LoadedModel, style: StyleOptions | None) -> bool:
    """Whether the network runs at all (strength 0: the output is the input)."""
    return not (model.task == "style" and style is not None and style.strength == 0)


def _is_expected(e: BaseException) -> bool:
    """The batcher's own refusals, which need no traceback."""
    return isinstance(e, batching.QueueFull | batching.DeadlineExceeded
                      | batching.BatcherClosed) or is_oom(e)


def _service_error(model: LoadedModel, e: Exception) -> errors.ServiceError:
    """What the client is told when computing `model` raised `e`."""
    if isinstance(e, batching.QueueFull):   # raced past admission (service/admission.py)
        return admission.busy(f"the server is busy: {e}")
    if isinstance(e, batching.DeadlineExceeded):
        return errors.DeadlineExceeded("the request timed out before its compute started")
    if isinstance(e, batching.BatcherClosed):
        return admission.shutting_down("the server is shutting down")
    if is_oom(e):
        return errors.OutOfMemory("the device ran out of memory for this image; retry later "
                                  "or send a smaller one", headers={"Retry-After": "1"})
    return errors.ComputeFailed(f"model {model.name} failed: {type(e).__name__}: {e}")


def _finish(pixels: np.ndarray, content: np.ndarray, alpha: np.ndarray | None,
            options: OutputOptions, style: StyleOptions | None) -> bytes:
    """Mix with the input if asked, then encode (runs in the codec pool)."""
    if style is not None and not style.is_plain:
        pixels = imaging.mix_style(content, pixels, strength=style.strength,
                                   preserve_color=style.preserve_color)
    return imaging.encode(pixels, alpha, options.format, options.quality)


def _prepare(data: bytes, *, max_pixels: int, scale: int, max_output_pixels: int,
             max_decoded_bytes: int | None) -> _Prepared:
    """Decode and pad (runs in the codec pool)."""
    decoded = imaging.decode(data, max_pixels=max_pixels, scale=scale,
                             max_output_pixels=max_output_pixels,
                             max_decoded_bytes=max_decoded_bytes)
    h, w = decoded.rgb.shape[:2]
    return _Prepared(imaging.pad_to(decoded.rgb, MIN_SIDE_PX), decoded.alpha, h, w)
