"""The batch policy: how each model runs on this device, measured at warm-up.

Why measure: the best batch is a property of the device, not a constant. On a CPU the per-image
cost of a forward pass is lowest at batch 1-2 and rises at 4-8 (the activations of a batch
outgrow the caches), so a server that fills batches of 8 gets slower as load rises. On a GPU the
per-image cost falls with the batch until the device is busy. So, per model (measured once per
architecture: the weights do not change the cost) and for the common input sizes:

1. paths: each candidate of `service.execution` is compared with float32 on a test image and
   rejected if any output pixel differs by more than one grey level;
2. path and largest batch, together: the winner at batch 1 is not the winner at batch 32 (on
   the H200 CUDA graphs win by 2.7x at batch 1 and by 1-2 % at 64), so the paths are timed at
   each batch the search visits, 1, 2, 4, ..., in turns (batch 1 timed again beside each
   batch); a path 15 % slower than the best at a batch is not timed at the larger ones, nor at
   the next size (which keeps the warm-up short). The batch doubles while the best per-image
   cost falls by at least 3 %, within `max_batch_size` and the pixel budget; the smallest batch
   whose best cost is within 3 % of the cheapest is kept (lower latency for the same
   throughput), with the path fastest at that batch;
3. lanes (CPU, by the registry): single-image forwards running concurrently with the threads
   split between them, against one forward at a time on all threads (`measure_lanes`); kept
   unless clearly slower (LANES_GAIN).

With `batch_policy=fixed` nothing is measured: `max_batch_size`, the loaded module, one lane.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from service.execution import Runner, use_threads

MAX_ERROR_LEVELS = 1.0   # largest |difference| from float32 allowed, in grey levels of 255
KEEP_WITHIN = 1.15       # candidates slower than this times the best stop being timed
BATCH_GAIN = 0.97        # a batch twice as large must cut the per-image cost by 3 %
# Lanes are kept unless 5 % slower than one forward at a time: a lone batch still takes every
# thread, so at low load they cost no latency, and under load the service's own codec and HTTP
# threads stall a multi-threaded forward at each of its barriers but slow only one
# single-threaded lane, which this measurement without them cannot see (`bench service`
# compares the two under load: `measured` against `one_lane`).
LANES_GAIN = 0.95
LANES_ROUNDS = 2         # lane options measured in turn this often; the best round counts

N = TypeVar("N", bound=Hashable)   # the names of the calls timed together


@dataclass(frozen=True)
class SizeChoice:
    """What runs inputs of about `side` x `side` pixels (the nearest measured size by pixels)."""

    side: int                 # input side of the measurement (0: any size, nothing measured)
    path: str                 # execution path, see service.execution
    max_batch: int            # the batcher forms no larger batch
    per_image_ms: dict[int, float] = field(default_factory=dict)  # batch -> ms/image on path
    path_ms: dict[str, float] = field(default_factory=dict)       # batch-1 ms of each path
    # path -> batch -> ms/image, every (path, batch) timed: what the joint choice compared
    timings: dict[str, dict[int, float]] = field(default_factory=dict)


@dataclass
class ModelPolicy:
    source: str                                 # measured | shared with NAME | fixed
    sizes: list[SizeChoice]
    default: SizeChoice                         # when no size was measured
    errors: dict[str, float] = field(default_factory=dict)  # path -> max grey-level difference
    rejected: list[str] = field(default_factory=list)        # over MAX_ERROR_LEVELS
    lanes_images_per_s: dict[int, float] = field(default_factory=dict)  # lanes -> images/s
    warmup_s: float = 0.0

    def choose(self, height: int, width: int) -> SizeChoice:
        if not self.sizes:
            return self.default
        pixels = max(1, height * width)
        return min(self.sizes, key=lambda s: abs(math.log(pixels / s.side ** 2)))

    def paths(self) -> set[str]:
        return {s.path for s in self.sizes} | {self.default.path}

    def as_dict(self, rounded: bool = True) -> dict[str, Any]:
        """JSON-ready (string keys; rounded for /v1/models and `bench`, exact for storing)."""
        r = (lambda x: round(x, 3)) if rounded else (lambda x: x)
        d = asdict(self)
        for s in [*d["sizes"], d["default"]]:
            s["per_image_ms"] = {str(b): r(ms) for b, ms in s["per_image_ms"].items()}
            s["path_ms"] = {p: r(ms) for p, ms in s["path_ms"].items()}
            s["timings"] = {p: {str(b): r(ms) for b, ms in t.items()}
                            for p, t in s["timings"].items()}
        d["lanes_images_per_s"] = {str(n): r(v) for n, v in d["lanes_images_per_s"].items()}
        d["errors"] = {p: r(v) for p, v in d["errors"].items()}
        d["warmup_s"] = r(d["warmup_s"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelPolicy:
        """The inverse of `as_dict(rounded=False)`."""
        def size(s: dict[str, Any]) -> SizeChoice:
            return SizeChoice(
                int(s["side"]), str(s["path"]), int(s["max_batch"]),
                {int(b): float(ms) for b, ms in s["per_image_ms"].items()},
                {str(p): float(ms) for p, ms in s["path_ms"].items()},
                {str(p): {int(b): float(ms) for b, ms in t.items()}
                 for p, t in s["timings"].items()})

        return cls(str(d["source"]), [size(s) for s in d["sizes"]], size(d["default"]),
                   {str(p): float(v) for p, v in d["errors"].items()},
                   [str(p) for p in d["rejected"]],
                   {int(n): float(v) for n, v in d["lanes_images_per_s"].items()},
                   float(d["warmup_s"]))


def fixed_policy(path: str, max_batch: int) -> ModelPolicy:
    return ModelPolicy("fixed", [], SizeChoice(0, path, max_batch))


def test_image(side: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A deterministic photo-like image in [0, 1], (batch, 3, side, side), on 256 levels:
    smooth colour fields, hard edges and fine texture. Flat or pure-noise inputs would hide the
    errors of reduced precision that real photographs show."""
    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(side, side), mode="bicubic",
                        align_corners=False)
    for _ in range(8):
        y, x, h, w = (int(v) for v in torch.randint(0, side, (4,), generator=g))
        img[..., y:y + h // 2 + 1, x:x + w // 2 + 1] = torch.rand(1, 3, 1, 1, generator=g)
    img = img + 0.03 * torch.randn(1, 3, side, side, generator=g)
    return (img.clamp(0, 1) * 255).round().div(255).expand(batch, -1, -1, -1).contiguous()


def levels(y: torch.Tensor) -> torch.Tensor:
    """Network output -> the integer grey levels the service would encode."""
    return (y.float().clamp(0, 1) * 255).round().cpu()


def time_calls(fns: dict[N, Callable[[], object]], device: torch.device, *,
               min_s: float, max_reps: int, min_reps: int = 2) -> dict[N, float]:
    """Seconds per call of each function: the minimum over repeats after one warm-up call each
    (the minimum, because other load on the machine only ever adds time). The functions take
    turns, so that a burst of other load cannot decide between them; at least `min_reps`
    rounds, more while they last under `min_s` each, up to `max_reps`."""
    def once(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for fn in fns.values():
        once(fn)
    times: dict[N, list[float]] = {name: [] for name in fns}
    reps = 0
    while reps < min_reps or (reps < max_reps and sum(map(sum, times.values())) < min_s * len(fns)):
        for name, fn in fns.items():
            times[name].append(once(fn))
        reps += 1
    return {name: min(ts) for name, ts in times.items()}


def check_errors(runners: dict[str, Runner], reference: Runner,
                 image: torch.Tensor) -> dict[str, float]:
    """Max |difference| in grey levels from `reference` (float32) on `image`, per path. On a
    GPU the output of each path's second call is checked: a CUDA graph path captures a shape
    at its second use (`service.graphs`), and it is the replay that serves."""
    ref = levels(reference(image.cpu()))
    calls = 2 if image.device.type == "cuda" else 1

    def output(run: Runner) -> torch.Tensor:
        for _ in range(calls - 1):
            run(image)
        return run(image)

    return {name: 0.0 if run is reference else float((levels(output(run)) - ref).abs().max())
            for name, run in runners.items()}


def measure(runners: dict[str, Runner], errors: dict[str, float], device: torch.device,
            sides: Sequence[int], *, base: str, max_batch: int, max_pixels: int,
            budget_s: float) -> ModelPolicy:
    """Time the paths within MAX_ERROR_LEVELS (and `base`, always allowed) at `sides` and the
    batch sizes the search visits, and choose (path, batch) per side together; see the module
    docstring. Stops early past `budget_s`."""
    started = time.monotonic()
    cpu = device.type == "cpu"
    # On a CPU, four rounds at least: with two, a start on a busy 2-core machine once timed
    # OpenVINO at 151 ms against ONNX Runtime's 137 (112 against 163 at the other starts).
    min_s, min_reps, max_reps = (0.25, 4, 6) if cpu else (0.05, 2, 20)
    rejected = sorted(p for p, e in errors.items() if e > MAX_ERROR_LEVELS and p != base)
    alive = [p for p in runners if p not in rejected]
    sizes: list[SizeChoice] = []

    def ms(side: int, calls: list[tuple[str, int]]) -> dict[tuple[str, int], float]:
        """Forward ms per image of each (path, batch), the calls taking turns; infinite when a
        batch does not fit in device memory."""
        try:
            images = {b: test_image(side, b).to(device) for _, b in calls}
            seconds = time_calls({(p, b): functools.partial(runners[p], images[b])
                                  for p, b in calls}, device,
                                 min_s=min_s, max_reps=max_reps, min_reps=min_reps)
            return {(p, b): 1000 * s / b for (p, b), s in seconds.items()}
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return dict.fromkeys(calls, math.inf)

    def faster(paths: list[str], batch: int, cost: dict[str, dict[int, float]]) -> list[str]:
        """`paths` within KEEP_WITHIN of the fastest of them at `batch`."""
        best = min(cost[p][batch] for p in paths)
        return [p for p in paths if cost[p][batch] <= KEEP_WITHIN * best]

    for side in sorted(sides):
        if sizes and time.monotonic() - started > budget_s:
            break
        cost: dict[str, dict[int, float]] = {p: {1: t} for (p, _), t in
                                             ms(side, [(p, 1) for p in alive]).items()}
        path_ms = {p: t[1] for p, t in cost.items()}
        alive = contenders = faster(alive, 1, cost)
        limit = min(max_batch, max(1, max_pixels // (side * side)))
        batch = 1
        while batch * 2 <= limit and time.monotonic() - started < budget_s:
            batch *= 2
            # batch 1 again, in turns with this batch: a burst of load must not make a batch
            # look cheaper (on a CPU a wrong batch > 1 costs a lone request the batch window)
            timed = ms(side, [(p, b) for p in contenders for b in (1, batch)])
            for p in contenders:
                cost[p][1] = min(cost[p][1], timed[p, 1])
            earlier = min(t for c in cost.values() for t in c.values())
            contenders = [p for p in contenders if timed[p, batch] < math.inf]
            if not contenders:     # out of device memory
                break
            for p in contenders:
                cost[p][batch] = timed[p, batch]
            contenders = faster(contenders, batch, cost)
            if min(cost[p][batch] for p in contenders) > BATCH_GAIN * earlier:
                break
        best = {b: min((p for p in cost if b in cost[p]), key=lambda p: cost[p][b])
                for b in sorted({b for c in cost.values() for b in c})}
        cheapest = min(cost[p][b] for b, p in best.items())
        chosen = min(b for b, p in best.items() if cost[p][b] * BATCH_GAIN <= cheapest)
        path = best[chosen]
        sizes.append(SizeChoice(side, path, chosen, dict(cost[path]), path_ms, cost))
    return ModelPolicy("measured", sizes, sizes[0] if sizes else SizeChoice(0, base, 1),
                       errors, rejected, warmup_s=time.monotonic() - started)


def adopt(measured: ModelPolicy, errors: dict[str, float], *, base: str,
          source: str) -> ModelPolicy:
    """`measured` (another model of the same architecture) for a model with its own `errors`
    (of the paths it has): a path this model's weights push over the limit gives way to the
    fastest allowed one it has."""
    rejected = sorted(p for p, e in errors.items() if e > MAX_ERROR_LEVELS and p != base)

    def allowed(s: SizeChoice) -> SizeChoice:
        if s.path not in rejected:
            return s
        ok = lambda p: p in errors and p not in rejected  # noqa: E731
        # the fastest allowed at the chosen batch, else at batch 1, else the base path
        at_batch = {p: t[s.max_batch] for p, t in s.timings.items()
                    if ok(p) and s.max_batch in t}
        times = at_batch or {p: ms for p, ms in s.path_ms.items() if ok(p)} or {base: 0.0}
        return replace(s, path=min(times, key=times.__getitem__))

    return ModelPolicy(source, [allowed(s) for s in measured.sizes], allowed(measured.default),
                       errors, rejected, dict(measured.lanes_images_per_s))


def measure_lanes(runner: Runner, side: int, threads: int, options: Iterable[int], *,
                  solo_batch: int = 1, reps: int = 3) -> dict[int, float]:
    """Images/s with `lanes` single-image forwards running at once on threads // lanes threads
    each, per option; option 1 is one forward at a time on all threads, at `solo_batch` (the
    best batch found by `measure`). The options take turns for LANES_ROUNDS rounds and each
    keeps its best, as other load only ever slows them. CPU only."""
    options = list(options)
    result: dict[int, float] = {}
    for _ in range(LANES_ROUNDS):
        for lanes in options:
            rate = _lanes_throughput(runner, side, threads, lanes,
                                     solo_batch if lanes == 1 else 1, reps)
            result[lanes] = max(rate, result.get(lanes, 0.0))
    use_threads(threads)
    return result


def _lanes_throughput(runner: Runner, side: int, threads: int, lanes: int, batch: int,
                      reps: int) -> float:
    x = test_image(side, batch)
    barrier = threading.Barrier(lanes)
    start: list[float] = []
    ends: list[float] = []

    def work() -> None:
        use_threads(threads // lanes)
        runner(x)                          # warm: sessions, primitive caches
        if barrier.wait() == 0:
            start.append(time.perf_counter())
        for _ in range(reps):
            runner(x)
        ends.append(time.perf_counter())

    workers = [threading.Thread(target=work, name=f"lane-{i}") for i in range(lanes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return lanes * batch * reps / (max(ends) - start[0])


def choose_lanes(measured: Sequence[dict[int, float]]) -> int:
    """The lane count whose throughput, relative to one lane, has the best geometric mean over
    the architectures measured, if it reaches LANES_GAIN times one lane's."""
    common = set.intersection(*(set(m) for m in measured)) if measured else set()
    best, best_gain = 1, LANES_GAIN
    for lanes in sorted(common - {1}):
        gains = [m[lanes] / m[1] for m in measured if 1 in m]
        gain = math.exp(sum(math.log(g) for g in gains) / len(gains)) if gains else 0.0
        if gain >= best_gain:
            best, best_gain = lanes, gain
    return best
