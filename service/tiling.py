"""Tiled inference: run a network over an image too big for one pass, tile by tile.

Why: a network's activations grow with the pixels it sees (the style network keeps 32 channels
at full resolution, the super-resolution network 64 at the output resolution), so a 4096x4096
image in one pass needs gigabytes. Cut into tiles of a fixed size, the largest tensor the
model ever sees is a batch of tiles, whatever the image size.

How:
- Tiles overlap by at least `overlap` input pixels and all have the same size (the last one of
  a row or column is shifted back to end at the border), so they batch together.
- Each tile's output is weighted by a feathered window, separable, per axis: at a side that
  meets a neighbour the outer quarter of the overlap counts (almost) nothing, since those
  pixels saw padding instead of the neighbour's content, and the weight ramps up linearly over
  the middle half. The windows are normalised to sum to exactly 1 at every output pixel, so an
  identity network reproduces the image exactly.
- Output is assembled one row of tiles at a time: a float band a little taller than one tile
  accumulates the weighted tiles, and rows no later tile touches are rounded into the uint8
  output. Host memory is the input, the output and O(tile x image width), never a float copy
  of the whole output.

Instance norm: the style networks normalise every feature map by its mean and variance over
the image. Tile by tile, each tile would get its own statistics: on a photograph (sky in one
tile, streets in another) that changes the colours and contrast by tens of levels.
`ImageNorm` first measures the statistics the whole image would have, tile by tile and one
normalisation layer at a time (each layer's input depends on the layers before it), then runs
the tiles with them; the result matches the untiled output to about a level. It costs a few
extra passes (numbers in service/README.md); networks without instance norm (the shipped
super-resolution models) need none and are exact up to the padding at the image border.
A multi-style network (conditional instance norm: a plain instance norm, then the mixed
per-style scale and shift) works the same way: its plain norms get the whole-image statistics,
and every pass gets the image's row of style weights (`mix`).

Priority: the tiles of a big image are background work. Through the batcher they queue at low
priority; `ImageNorm` runs beside the batcher, so before each forward pass it steps aside while
`busy()` says normal requests are waiting or running, for at most `YIELD_S` per pass, so that
it still progresses under a steady stream of them. It takes a callable: no batcher here.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NormStats = Literal["image", "tile"]


@dataclass
class Progress:
    """Tile passes done out of the total: written by whichever thread runs them, read by a job's
    heartbeat (service/job_runner.py). An image in one pass is one of one. (A job that is not
    an image counts its own units, training steps, and says more in `detail`.)"""

    done: int = 0
    total: int = 1
    detail: dict[str, Any] = field(default_factory=dict)
_EDGE_WEIGHT = 1e-3   # weight of the ignored outer part of an overlap (never 0: see feather)
YIELD_S = 0.02        # the longest a background forward pass steps aside for other work


def wait_while(busy: Callable[[], bool], max_s: float, poll_s: float = 0.001) -> None:
    """Sleep while `busy()`, at most `max_s` (background work yields, but is never starved)."""
    deadline = time.monotonic() + max_s
    while busy() and time.monotonic() < deadline:
        time.sleep(poll_s)


@dataclass(frozen=True)
class TileConfig:
    """When and how the service tiles an image (from Settings; see service/README.md)."""

    threshold_pixels: int       # network output pixels above which an image is tiled
    size: int                   # style tiles, input pixels
    overlap: int
    superres_size: int          # super-resolution tiles, input pixels
    superres_overlap: int
    norm_stats: NormStats = "image"
    batch_size: int = 8         # tiles per forward pass at most ...
    batch_pixels: int = 4 * 512 * 512   # ... and input pixels per forward pass at most

    def applies(self, height: int, width: int, factor: int) -> bool:
        return height * width * factor * factor > self.threshold_pixels

    def tile_for(self, factor: int) -> tuple[int, int]:
        """(tile side, overlap) in input pixels for a model of this factor. Super-resolution
        tiles are `superres_size` at x4 and the same output size at other factors (x8: half
        the side), since the network's memory grows with its output."""
        if factor == 1:
            return self.size, self.overlap
        return max(2 * self.superres_overlap + 8, self.superres_size * 4 // factor), \
            self.superres_overlap

    def computed_pixels(self, height: int, width: int, factor: int,
                        tiled: bool | None = None) -> int:
        """Input pixels the network runs over for an image: the image, or (`tiled`, by default
        when over the threshold) its tiles with their overlaps."""
        if not (self.applies(height, width, factor) if tiled is None else tiled):
            return height * width
        size, overlap = self.tile_for(factor)
        th, tw = min(size, height), min(size, width)
        return (len(starts(height, th, overlap)) * th) * (len(starts(width, tw, overlap)) * tw)

    def tiles_per_batch(self, tile_h: int, tile_w: int) -> int:
        return max(1, min(self.batch_size, self.batch_pixels // (tile_h * tile_w)))


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side min(tile, length) covering [0, length).

    Neighbours overlap by at least `overlap`; tiles are evenly spread, so the overlaps are
    as equal as integer offsets allow. One tile when it covers the whole length.
    """
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def feather(offsets: Sequence[int], tile: int, length: int, overlap: int) -> list[np.ndarray]:
    """Per-tile 1-D weights (float32, `tile` long each) that sum to 1 at every position.

    Raw window, at each side facing a neighbour: ~0 over the outer quarter of the overlap,
    a linear ramp over the middle half, 1 beyond; never exactly 0, so every position has
    weight. Dividing by the sum of the raw windows makes them a partition of unity however
    many tiles overlap a position.
    """
    margin = overlap // 4
    ramp = max(1, overlap - 2 * margin)
    pos = np.arange(tile, dtype=np.float32) + 0.5
    rise = np.clip((pos - margin) / ramp, _EDGE_WEIGHT, 1)
    raw = []
    for i in range(len(offsets)):
        w = np.ones(tile, np.float32)
        if i > 0:
            w = np.minimum(w, rise)
        if i < len(offsets) - 1:
            w = np.minimum(w, rise[::-1])
        raw.append(w)
    total = np.zeros(length, np.float32)
    for off, w in zip(offsets, raw, strict=True):
        total[off:off + tile] += w
    return [w / total[off:off + tile] for off, w in zip(offsets, raw, strict=True)]


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of a (height, width) image go, and their blending weights.

    Positions are in input pixels; weights in output pixels (`factor` times as many).
    Tiles are numbered row by row: index = row * len(xs) + column.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    factor: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    wy: tuple[np.ndarray, ...]
    wx: tuple[np.ndarray, ...]

    @classmethod
    def make(cls, height: int, width: int, *, tile: int, overlap: int,
             factor: int = 1) -> TilePlan:
        th, tw = min(tile, height), min(tile, width)
        ys, xs = starts(height, tile, overlap), starts(width, tile, overlap)
        f = factor
        return cls(height, width, th, tw, f, tuple(ys), tuple(xs),
                   tuple(feather([y * f for y in ys], th * f, height * f, overlap * f)),
                   tuple(feather([x * f for x in xs], tw * f, width * f, overlap * f)))

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def crop(self, image: np.ndarray, index: int) -> np.ndarray:
        """The input of tile `index` (a view into `image`)."""
        row, col = divmod(index, len(self.xs))
        y, x = self.ys[row], self.xs[col]
        return image[y:y + self.tile_h, x:x + self.tile_w]

    def weight(self, index: int) -> np.ndarray:
        """Tile `index`'s (f*tile_h, f*tile_w) blending weights."""
        row, col = divmod(index, len(self.xs))
        return np.outer(self.wy[row], self.wx[col])


class Stitcher:
    """Blends tile outputs, added in index order, into the (f*H, f*W, C) uint8 output."""

    def __init__(self, plan: TilePlan, channels: int = 3) -> None:
        self.plan = plan
        f = plan.factor
        self.output = np.empty((plan.height * f, plan.width * f, channels), np.uint8)
        self._band = np.zeros((0, plan.width * f, channels), np.float32)
        self._top = 0      # output row of self._band[0]; rows above are final
        self._next = 0     # index of the tile expected next

    def add(self, index: int, out: np.ndarray) -> None:
        plan, f = self.plan, self.plan.factor
        if index != self._next:
            raise ValueError(f"tile {index} added out of order (expected {self._next})")
        th, tw = plan.tile_h * f, plan.tile_w * f
        if out.shape[:2] != (th, tw):
            raise ValueError(f"tile {index}: output is {out.shape[:2]}, expected {(th, tw)}")
        row, col = divmod(index, len(plan.xs))
        y0, x0 = plan.ys[row] * f - self._top, plan.xs[col] * f
        if col == 0 and y0 + th > len(self._band):   # a new row of tiles: grow the band
            grow = np.zeros((y0 + th - len(self._band), *self._band.shape[1:]), np.float32)
            self._band = np.concatenate([self._band, grow])
        weight = plan.wy[row][:, None, None] * plan.wx[col][None, :, None]
        self._band[y0:y0 + th, x0:x0 + tw] += out * weight
        self._next += 1
        if col == len(plan.xs) - 1:                  # the row is done: flush the final rows
            last = row == len(plan.ys) - 1
            done = (plan.height if last else plan.ys[row + 1]) * f - self._top
            np.clip(np.rint(self._band[:done]), 0, 255, out=self._band[:done])
            self.output[self._top:self._top + done] = self._band[:done]
            self._band = self._band[done:].copy()
            self._top += done

    def result(self) -> np.ndarray:
        if self._next != len(self.plan):
            raise ValueError(f"{self._next} of {len(self.plan)} tiles were added")
        return self.output


def run_tiled(image: np.ndarray, run: Callable[[list[np.ndarray]], Sequence[np.ndarray]], *,
              tile: int, overlap: int, factor: int = 1, batch_size: int = 1) -> np.ndarray:
    """`run` (uint8 (h, w, C) tiles of one shape -> outputs (f*h, f*w, C)) over `image` in
    tiles, `batch_size` tiles per call; returns the blended (f*H, f*W, C) uint8 output."""
    plan = TilePlan.make(image.shape[0], image.shape[1], tile=tile, overlap=overlap,
                         factor=factor)
    stitcher = Stitcher(plan, image.shape[2])
    for first in range(0, len(plan), batch_size):
        indices = range(first, min(first + batch_size, len(plan)))
        for i, out in zip(indices, run([plan.crop(image, i) for i in indices]), strict=True):
            stitcher.add(i, out)
    return stitcher.result()


async def run_tiled_async(image: np.ndarray,
                          submit: Callable[[np.ndarray], Awaitable[np.ndarray]], *,
                          tile: int, overlap: int, factor: int = 1, window: int = 8,
                          executor: Executor | None = None,
                          progress: Progress | None = None) -> np.ndarray:
    """Like `run_tiled`, with `submit(tile) -> output` awaited for one tile at a time (e.g. a
    dynamic batcher, which batches the tiles that are queued together).

    The first tile is submitted on its own, so its start is the start of the computation (a
    caller can put its deadline on that one call); then up to `window` tiles are in flight at
    once, which bounds both the queue slots taken and the outputs waiting to be stitched.
    Stitching runs in `executor` (None: the loop's default), not on the event loop.
    Cancelling the caller cancels every tile still in flight. `progress` counts the tiles
    stitched.
    """
    loop = asyncio.get_running_loop()
    plan = TilePlan.make(image.shape[0], image.shape[1], tile=tile, overlap=overlap,
                         factor=factor)
    stitcher = Stitcher(plan, image.shape[2])
    progress = progress or Progress()
    progress.done, progress.total = 0, len(plan)

    async def stitch(index: int, out: np.ndarray) -> None:
        await loop.run_in_executor(executor, stitcher.add, index, out)
        progress.done += 1

    await stitch(0, await submit(plan.crop(image, 0)))
    in_flight: dict[int, asyncio.Future[np.ndarray]] = {}
    submitted = 1
    try:
        for i in range(1, len(plan)):
            while submitted < min(len(plan), i + window):
                in_flight[submitted] = asyncio.ensure_future(submit(plan.crop(image, submitted)))
                submitted += 1
            await stitch(i, await in_flight.pop(i))   # in order; later tiles keep computing
    finally:
        for task in in_flight.values():
            task.cancel()
        await asyncio.gather(*in_flight.values(), return_exceptions=True)
    return stitcher.result()


# -- instance norm with whole-image statistics --------------------------------------------------


def has_instance_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.InstanceNorm2d) for m in module.modules())


def image_norm_passes(module: nn.Module) -> float:
    """What `ImageNorm.run_tiled` costs in full passes over the tiles: the last one, and a
    measuring pass per normalisation layer that stops at it, about half a pass on average
    (the layers are spread along the network). Udnie's 15: 8.5 passes."""
    norms = sum(isinstance(m, nn.InstanceNorm2d) for m in module.modules())
    return 1 + norms / 2


class Cancelled(Exception):
    """`should_stop` said so between two forward passes."""


class _Measured(Exception):
    """Stops a forward pass once the layer being measured has seen its input."""


class ImageNorm:
    """A private copy of an instance-norm network whose normalisation layers can use given
    (whole-image) statistics instead of each input's own.

    The copy keeps the hooks away from the shared network, which the batcher may be running at
    the same moment on another thread. Not thread-safe itself: one image at a time.
    """

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.module = copy.deepcopy(module)
        self.device, self.dtype = device, dtype
        self.norms = [m for m in self.module.modules() if isinstance(m, nn.InstanceNorm2d)]
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mix: torch.Tensor | None = None   # (1, S): a multi-style network's weights
        self.progress = Progress()             # tile passes, measuring ones included
        for norm in self.norms:
            norm.register_forward_hook(self._normalise)

    def _normalise(self, norm: nn.InstanceNorm2d, inputs: tuple[torch.Tensor, ...],
                   output: torch.Tensor) -> torch.Tensor | None:
        stats = self.stats.get(norm)
        if stats is None:
            return None        # the layer's own (per-input) statistics
        mean, var = stats
        x = inputs[0]
        y = (x.float() - mean) * torch.rsqrt(var + norm.eps)
        if norm.affine:
            y = y * norm.weight.float()[None, :, None, None] \
                + norm.bias.float()[None, :, None, None]
        return y.to(x.dtype)

    def _forward(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 (h, w, 3) tiles -> the network's output (N, 3, f*h, f*w), as the registry's
        base path runs it (device, dtype, the contiguous layout, [0, 1])."""
        x = torch.from_numpy(np.stack(tiles)).to(self.device).permute(0, 3, 1, 2)
        x = (x.to(self.dtype) / 255).contiguous()
        try:
            if self.mix is None:
                return self.module(x)
            return self.module(x, self.mix.expand(len(tiles), -1))
        finally:   # a measuring pass ends early, by an exception
            self.progress.done += len(tiles)

    def run(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 tiles in, uint8 outputs out, with the statistics set by `measure`."""
        with torch.inference_mode():
            y = (self._forward(tiles).float().clamp(0, 1) * 255).round().to(torch.uint8)
            return list(y.permute(0, 2, 3, 1).contiguous().cpu().numpy())

    def measure(self, image: np.ndarray, plan: TilePlan, batch_size: int,
                should_stop: Callable[[], bool] = lambda: False) -> None:
        """Set every layer's statistics to those of the whole `image`, measured over the tiles
        of `plan` weighted by their blending weights (each pixel counts once, and the edges
        that saw padding hardly at all). Layer k's input depends on layers < k, so the layers
        are measured in order, each with a pass over the tiles that stops at it."""
        self.stats.clear()
        with torch.inference_mode():
            for norm in self.norms:
                self.stats[norm] = self._measure_layer(norm, image, plan, batch_size,
                                                       should_stop)

    def _measure_layer(self, norm: nn.InstanceNorm2d, image: np.ndarray, plan: TilePlan,
                       batch_size: int, should_stop: Callable[[], bool]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted mean and variance of `norm`'s input over all tiles, (1, C, 1, 1) each."""
        sums = torch.zeros(3, norm.num_features, dtype=torch.float64, device=self.device)
        weights: list[torch.Tensor] = []   # of the tiles in the current batch

        def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].float()
            w = F.adaptive_avg_pool2d(torch.stack(weights)[:, None], (x.shape[-2], x.shape[-1]))
            sums[0] += (x * w).sum((0, 2, 3))
            sums[1] += (x * x * w).sum((0, 2, 3))
            sums[2] += w.sum()
            raise _Measured

        handle = norm.register_forward_pre_hook(record)
        try:
            for first in range(0, len(plan), batch_size):
                if should_stop():
                    raise Cancelled
                indices = range(first, min(first + batch_size, len(plan)))
                weights[:] = [torch.from_numpy(plan.weight(i)).to(self.device) for i in indices]
                with contextlib.suppress(_Measured):
                    self._forward([plan.crop(image, i) for i in indices])
        finally:
            handle.remove()
        mean = sums[0] / sums[2]
        var = (sums[1] / sums[2] - mean * mean).clamp_min(0)
        return mean.float()[None, :, None, None], var.float()[None, :, None, None]

    def run_tiled(self, image: np.ndarray, *, tile: int, overlap: int, factor: int = 1,
                  batch_size: int = 1, should_stop: Callable[[], bool] = lambda: False,
                  busy: Callable[[], bool] = lambda: False, yield_s: float = YIELD_S,
                  mix: np.ndarray | None = None, progress: Progress | None = None
                  ) -> np.ndarray:
        """Measure the whole-image statistics, then run the tiles with them. Before every
        forward pass it waits while `busy()` (normal requests first), at most `yield_s`, then
        asks `should_stop` (a client that went away stops a long job). `mix`: a multi-style
        network's (S,) style weights for the image. `progress` counts the tile passes: one per
        normalisation layer to measure, and the last."""
        plan = TilePlan.make(image.shape[0], image.shape[1], tile=tile, overlap=overlap,
                             factor=factor)
        self.progress = progress or Progress()
        self.progress.done, self.progress.total = 0, len(plan) * (len(self.norms) + 1)

        def before_pass() -> bool:
            """Whether to stop, after stepping aside for other work."""
            wait_while(busy, yield_s)
            return should_stop()

        def run(tiles: list[np.ndarray]) -> list[np.ndarray]:
            if before_pass():
                raise Cancelled
            return self.run(tiles)

        if mix is not None:
            self.mix = torch.from_numpy(np.asarray(mix, np.float32))[None].to(self.device)
        try:
            self.measure(image, plan, batch_size, before_pass)
            return run_tiled(image, run, tile=tile, overlap=overlap, factor=factor,
                             batch_size=batch_size)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise
        finally:
            self.stats.clear()
            self.mix = None
