"""The batch policy: exact network rewrites, the choice rules (on made-up costs per path and
batch, never on measured time: the path and the batch are chosen together), the batcher's
per-key limits and lanes, and a measured service end to end."""

from __future__ import annotations

import asyncio
import copy
import threading

import numpy as np
import pytest
import torch

from model_store.onnx_export import onnx_bytes
from nets.style_net import StyleNet
from nets.superres_net import SuperResNet
from service import policy as policies
from service.batcher import Batcher
from service.execution import (
    OnnxRunner,
    OpenVinoRunner,
    TorchRunner,
    candidates,
    installed,
    use_threads,
)
from service.policy import ModelPolicy, SizeChoice
from service.registry import LoadedModel
from service.rewrite import ColumnConv, TransposedUpConv, rewrite
from tests.helpers import images
from tests.helpers.server import running, until

NETWORKS = {
    "style reflect": lambda: StyleNet(norm="instance", upsample="resize_conv", padding="reflect"),
    "style zero": lambda: StyleNet(norm="instance", upsample="resize_conv"),
    "sr x4": lambda: SuperResNet(factor=4, norm="none", upsample="resize_conv",
                                 padding="reflect", residual=True),
    "sr x8 instance": lambda: SuperResNet(factor=8, norm="instance", upsample="resize_conv",
                                          padding="reflect"),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_rewrite_computes_the_same_function(name: str) -> None:
    torch.manual_seed(0)
    net = NETWORKS[name]().eval()
    fast = rewrite(net)
    kinds = {type(m) for m in fast.modules()}
    assert {TransposedUpConv, ColumnConv} <= kinds
    assert not any(isinstance(m, torch.nn.Upsample) for m in fast.modules())
    nhwc = copy.deepcopy(fast).to(memory_format=torch.channels_last)   # as on CUDA
    for shape in [(1, 3, 16, 16), (2, 3, 21, 13), (1, 3, 18, 31)]:
        x = torch.rand(*shape)
        with torch.inference_mode():
            a, b = net(x), fast(x)
            c = nhwc(x.contiguous(memory_format=torch.channels_last))
        assert a.shape == b.shape == c.shape
        assert (a - b).abs().max().item() * 255 < 0.01   # float rounding, not approximation
        assert (a - c).abs().max().item() * 255 < 0.01


def test_transposed_networks_keep_their_upsampling() -> None:
    net = StyleNet(norm="instance").eval()   # transposed convolutions: nothing to rewrite there
    fast = rewrite(net)
    assert not any(isinstance(m, TransposedUpConv) for m in fast.modules())
    x = torch.rand(1, 3, 20, 24)
    with torch.inference_mode():
        assert (net(x) - fast(x)).abs().max().item() * 255 < 0.01


def test_cpu_candidates_are_the_documented_paths() -> None:
    net = NETWORKS["sr x4"]().eval()
    names = set(candidates(net, torch.device("cpu"), "float32", torch.float32))
    optional = {"onnx_rewrite": "onnxruntime", "openvino_rewrite": "openvino"}
    assert names == {"rewrite"} | {p for p, package in optional.items() if installed(package)}
    assert set(candidates(net, torch.device("cpu"), "float32", torch.float32,
                          only={"rewrite"})) == {"rewrite"}


@pytest.mark.parametrize("runner_type, package", [(OnnxRunner, "onnxruntime"),
                                                  (OpenVinoRunner, "openvino")])
def test_exported_runners_are_one_graph_for_every_size_and_thread_count(runner_type: type,
                                                                        package: str) -> None:
    if not installed(package):
        pytest.skip(f"needs {package}")
    torch.manual_seed(1)
    net = rewrite(NETWORKS["style reflect"]().eval())
    runner = runner_type(onnx_bytes(net))
    for threads, shape in [(1, (1, 3, 16, 16)), (2, (2, 3, 21, 13)), (1, (1, 3, 40, 28))]:
        x = torch.rand(*shape)
        use_threads(threads)
        try:
            y = runner(x)
            kept = y.clone()
            runner(torch.rand(*shape))       # the next call must not write into `y`
        finally:
            use_threads(1)
        assert torch.equal(y, kept)
        with torch.inference_mode():
            assert (y - net(x)).abs().max().item() * 255 < 0.01


@pytest.mark.skipif(not installed("openvino"), reason="needs openvino")
def test_openvino_runner_keeps_one_request_per_thread() -> None:
    runner = OpenVinoRunner(onnx_bytes(rewrite(NETWORKS["sr x4"]().eval())))
    mine = runner.request(1)
    assert runner.request(1) is mine
    theirs: list = []
    worker = threading.Thread(target=lambda: theirs.append(runner.request(1)))
    worker.start()
    worker.join()
    assert theirs[0] is not mine


def test_timed_paths_take_turns() -> None:
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    seconds = policies.time_calls(fns, torch.device("cpu"), min_s=0, max_reps=5)
    assert order == ["a", "b"] * 3          # one warm-up call each, then two rounds
    order.clear()
    policies.time_calls(fns, torch.device("cpu"), min_s=0, max_reps=5, min_reps=4)
    assert order == ["a", "b"] * 5
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


def fake_timer(costs: dict[tuple[str, int], float]):  # noqa: ANN201
    """time_calls stand-in: seconds per call from (path, batch), read off the runner's name."""

    def time_calls(fns, device, **limits) -> dict[str, float]:  # noqa: ANN001
        return {name: fn() for name, fn in fns.items()}

    def runner(path: str):  # noqa: ANN202
        return lambda x: costs[(path, x.shape[0])] / 1000 * x.shape[0]

    return time_calls, runner


def test_measure_picks_the_fastest_accurate_path_and_the_batch_where_cost_stops_falling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # ms per image: "fast" is fastest but 3 levels off; on "good" the cost falls to batch 4
    costs = {("fast", 1): 1.0, ("good", 1): 10.0, ("good", 2): 6.0, ("good", 4): 4.0,
             ("good", 8): 3.9, ("slow", 1): 50.0}
    time_calls, runner = fake_timer(costs)
    monkeypatch.setattr(policies, "time_calls", time_calls)
    runners = {p: runner(p) for p in ("fast", "good", "slow")}
    errors = {"fast": 3.0, "good": 1.0, "slow": 0.0}
    p = policies.measure(runners, errors, torch.device("cpu"), [64], base="slow",
                         max_batch=64, max_pixels=1 << 30, budget_s=60)
    (choice,) = p.sizes
    assert p.rejected == ["fast"]
    assert (choice.path, choice.max_batch) == ("good", 4)   # 8 saves under 3 %: stop at 4
    assert set(choice.per_image_ms) == {1, 2, 4, 8}
    assert choice.path_ms == {"good": 10.0, "slow": 50.0}
    assert choice.timings == {"good": choice.per_image_ms, "slow": {1: 50.0}}


def test_batch_1_is_timed_again_beside_each_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of load during the first batch-1 timing must not make batch 2 look cheaper."""
    batch1_calls = []

    def run(x: torch.Tensor) -> float:   # seconds per call, as the fake timer reports them
        if x.shape[0] == 1:
            batch1_calls.append(1)
            return 0.020 if len(batch1_calls) == 1 else 0.010
        return 0.0099 * x.shape[0]       # 9.9 ms per image: under 3 % cheaper than 10

    monkeypatch.setattr(policies, "time_calls",
                        lambda fns, device, **_: {k: f() for k, f in fns.items()})
    p = policies.measure({"p": run}, {"p": 0.0}, torch.device("cpu"), [32], base="p",
                         max_batch=2, max_pixels=1 << 30, budget_s=60)
    assert p.sizes[0].per_image_ms == {1: 10.0, 2: 9.9}
    assert p.sizes[0].max_batch == 1


def test_measure_keeps_batch_1_when_batches_cost_more_and_respects_the_pixel_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    costs = {("cpu", 1): 100.0, ("cpu", 2): 101.0, ("cpu", 4): 120.0,
             ("gpu", 1): 10.0, ("gpu", 2): 5.0, ("gpu", 4): 2.0}
    time_calls, runner = fake_timer(costs)
    monkeypatch.setattr(policies, "time_calls", time_calls)
    cpu = policies.measure({"cpu": runner("cpu")}, {"cpu": 0.0}, torch.device("cpu"), [32],
                           base="cpu", max_batch=8, max_pixels=1 << 30, budget_s=60)
    assert (cpu.sizes[0].max_batch, set(cpu.sizes[0].per_image_ms)) == (1, {1, 2})
    gpu = policies.measure({"gpu": runner("gpu")}, {"gpu": 0.0}, torch.device("cpu"), [32],
                           base="gpu", max_batch=64, max_pixels=2 * 32 * 32, budget_s=60)
    assert gpu.sizes[0].max_batch == 2     # 4 would exceed the pixel budget


def test_the_path_and_the_batch_are_chosen_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a GPU: graphs win at batch 1, eager passes at large batches. Each batch times every
    path still within 15 % of the best there (batch 1 again beside it)."""
    costs = {("graphs", 1): 1.0, ("graphs", 2): 0.6, ("graphs", 4): 0.45,
             ("eager", 1): 1.1, ("eager", 2): 0.55, ("eager", 4): 0.30, ("eager", 8): 0.20,
             ("eager", 16): 0.199, ("cl", 1): 3.0}
    time_calls, runner = fake_timer(costs)
    rounds: list[set[tuple[str, int]]] = []

    def recording(fns, device, **limits):  # noqa: ANN001, ANN202
        rounds.append(set(fns))
        return time_calls(fns, device, **limits)

    monkeypatch.setattr(policies, "time_calls", recording)
    paths = ("graphs", "eager", "cl")
    p = policies.measure({n: runner(n) for n in paths}, dict.fromkeys(paths, 0.0),
                         torch.device("cpu"), [64], base="cl", max_batch=64,
                         max_pixels=1 << 30, budget_s=60)
    (choice,) = p.sizes
    # 16 saves under 3 % on 8; graphs, the winner at batch 1, is 50 % slower at 4
    assert (choice.path, choice.max_batch) == ("eager", 8)
    assert choice.per_image_ms == {1: 1.1, 2: 0.55, 4: 0.30, 8: 0.20, 16: 0.199}
    assert choice.path_ms == {"graphs": 1.0, "eager": 1.1, "cl": 3.0}
    assert {path: set(t) for path, t in choice.timings.items()} == {
        "graphs": {1, 2, 4}, "eager": {1, 2, 4, 8, 16}, "cl": {1}}
    both = lambda b: {(n, k) for n in ("graphs", "eager") for k in (1, b)}  # noqa: E731
    assert rounds == [{("graphs", 1), ("eager", 1), ("cl", 1)}, both(2), both(4),
                      {("eager", 1), ("eager", 8)}, {("eager", 1), ("eager", 16)}]
    assert p.as_dict()["sizes"][0]["timings"]["graphs"] == {"1": 1.0, "2": 0.6, "4": 0.45}


def test_the_batch_1_winner_stays_when_it_is_fastest_at_the_chosen_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    costs = {("graphs", 1): 1.0, ("graphs", 2): 0.5, ("graphs", 4): 0.30, ("graphs", 8): 0.295,
             ("eager", 1): 1.1, ("eager", 2): 0.52, ("eager", 4): 0.31, ("eager", 8): 0.30}
    time_calls, runner = fake_timer(costs)
    monkeypatch.setattr(policies, "time_calls", time_calls)
    p = policies.measure({n: runner(n) for n in ("eager", "graphs")},
                         {"eager": 0.0, "graphs": 0.0}, torch.device("cpu"), [64],
                         base="eager", max_batch=64, max_pixels=1 << 30, budget_s=60)
    assert (p.sizes[0].path, p.sizes[0].max_batch) == ("graphs", 4)


def test_a_batch_out_of_device_memory_ends_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    costs = {("a", 1): 4.0, ("a", 2): 2.0, ("a", 4): 1.0, ("b", 1): 4.1, ("b", 2): 1.9,
             ("b", 4): 1.1}
    time_calls, runner = fake_timer(costs)

    def out_of_memory_at_8(fns, device, **limits):  # noqa: ANN001, ANN202
        if any(b == 8 for _, b in fns):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return time_calls(fns, device, **limits)

    monkeypatch.setattr(policies, "time_calls", out_of_memory_at_8)
    p = policies.measure({n: runner(n) for n in ("a", "b")}, {"a": 0.0, "b": 0.0},
                         torch.device("cpu"), [64], base="a", max_batch=64,
                         max_pixels=1 << 30, budget_s=60)
    (choice,) = p.sizes
    assert (choice.path, choice.max_batch) == ("a", 4)
    assert set(choice.timings["a"]) == set(choice.timings["b"]) == {1, 2, 4}


def test_a_shared_policy_falls_back_to_the_fastest_allowed_at_the_chosen_batch() -> None:
    size = SizeChoice(64, "a", 8, {1: 1.0, 8: 0.2}, {"a": 1.0, "b": 2.0, "c": 1.5},
                      {"a": {1: 1.0, 8: 0.2}, "b": {1: 2.0, 8: 0.25}, "c": {1: 1.5}})
    shared = policies.adopt(ModelPolicy("measured", [size], size),
                            {"a": 3.0, "b": 0.0, "c": 0.0}, base="c", source="shared")
    assert shared.sizes[0].path == "b"       # c is faster at batch 1, never timed at 8


def test_sizes_map_to_the_nearest_measured_size_and_shared_policies_respect_accuracy() -> None:
    small = SizeChoice(64, "a", 4, {1: 1.0}, {"a": 1.0, "b": 2.0})
    large = SizeChoice(256, "b", 1, {1: 9.0}, {"b": 9.0, "a": 9.5})
    p = ModelPolicy("measured", [small, large], small)
    assert p.choose(64, 64) is small and p.choose(100, 120) is small
    assert p.choose(200, 200) is large and p.choose(1024, 1024) is large
    shared = policies.adopt(p, {"a": 0.0, "b": 4.0, "base": 0.0}, base="base", source="shared")
    assert [s.path for s in shared.sizes] == ["a", "a"] and shared.rejected == ["b"]
    worse = policies.adopt(p, {"a": 3.0, "b": 3.0, "base": 0.0}, base="base", source="shared")
    assert [s.path for s in worse.sizes] == ["base", "base"]
    assert policies.fixed_policy("base", 8).choose(5000, 5000).max_batch == 8


def test_lanes_are_chosen_on_the_geometric_mean_gain() -> None:
    assert policies.choose_lanes([{1: 10.0, 2: 14.0}, {1: 10.0, 2: 10.0}]) == 2   # +18 %
    assert policies.choose_lanes([{1: 10.0, 2: 9.6}]) == 2                       # -4 %
    assert policies.choose_lanes([{1: 10.0, 2: 9.0}]) == 1                       # -10 %
    assert policies.choose_lanes([]) == 1


def test_measure_lanes_runs_concurrent_forwards() -> None:
    seen: set[int] = set()
    active = [0]
    lock = threading.Lock()

    def runner(x: torch.Tensor) -> torch.Tensor:
        with lock:
            active[0] += 1
            seen.add(active[0])
        threading.Event().wait(0.01)
        with lock:
            active[0] -= 1
        return x

    rates = policies.measure_lanes(runner, 16, threads=2, options=[1, 2], reps=2)
    assert set(rates) == {1, 2} and all(r > 0 for r in rates.values())
    assert 2 in seen


def test_check_errors_counts_grey_levels() -> None:
    x = policies.test_image(32)
    ref = TorchRunner(torch.nn.Identity(), torch.float32)
    off = {"same": ref, "off": lambda t: t + 2.4 / 255}
    assert policies.check_errors(off, ref, x) == {"same": 0.0, "off": 2.0}


class Hold:
    """run_batch whose calls each wait for a permit; records sizes, lanes and concurrency."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.calls: list[tuple[int, int]] = []   # (batch size, lanes)
        self.lanes = threading.local()

    def on_lanes(self, lanes: int) -> None:
        self.lanes.n = lanes

    def __call__(self, key: str, payloads: list[int]) -> list[int]:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.calls.append((len(payloads), self.lanes.n))
        assert self.permits.acquire(timeout=30)
        with self.lock:
            self.active -= 1
        return payloads


async def test_batch_limit_per_key_caps_batches() -> None:
    batches: list[tuple[str, int]] = []

    def run(key: str, payloads: list[int]) -> list[int]:
        batches.append((key, len(payloads)))
        return payloads

    b = Batcher(run, max_batch_size=8, max_wait_ms=50, queue_limit=100,
                batch_limit=lambda key: 2 if key == "small" else 100)
    b.start()
    await asyncio.gather(*(b.submit("small", i) for i in range(5)),
                         *(b.submit("big", i) for i in range(5)))
    await b.close()
    assert sorted(n for k, n in batches if k == "small") == [1, 2, 2]
    assert [n for k, n in batches if k == "big"] == [5]      # max_batch_size still caps at 8


async def test_lanes_run_alone_on_all_threads_and_together_on_equal_shares() -> None:
    hold = Hold()
    b = Batcher(hold, max_batch_size=1, max_wait_ms=0, queue_limit=100)
    b.use_lanes(2, hold.on_lanes)
    b.start()
    first = asyncio.create_task(b.submit("k", 0))
    await until(lambda: hold.calls, what="the first batch")
    rest = [asyncio.create_task(b.submit("k", i)) for i in range(1, 5)]
    await until(lambda: b.queued == 4, what="4 queued")
    assert hold.calls == [(1, 2)]            # alone: both lanes; the others wait for it
    hold.permits.release()
    await until(lambda: hold.active == 2, what="two batches at once")
    assert hold.calls[1:] == [(1, 1), (1, 1)]   # several ready: one lane each, concurrently
    hold.permits.release(10)
    await asyncio.gather(first, *rest)
    await b.close()
    assert hold.peak == 2 and len(hold.calls) == 5


async def test_forward_passes_run_on_every_thread_whatever_a_lane_left(
        make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch starts a thread on the count last set by another thread (not the main one): a
    measuring lane leaves 1. A batch worker made after it must still run on all the threads,
    with one lane too (it once ran on one core, half the CPU idle)."""
    seen: list[tuple[str, int]] = []
    run = LoadedModel.run

    def spy(self: LoadedModel, *args: object) -> object:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return run(self, *args)

    monkeypatch.setattr(LoadedModel, "run", spy)
    torch.set_num_threads(2)
    try:
        async with running(make_settings(models=["udnie"], cache_bytes=0)) as r:
            lane = threading.Thread(target=use_threads, args=(1,))
            lane.start()
            lane.join()
            answer = await r.client.post("/v1/stylize?style=udnie", content=images.png(20, 20),
                                         headers={"content-type": "image/png"})
            assert answer.status_code == 200
    finally:
        torch.set_num_threads(1)
    assert [n for name, n in seen if name.startswith("batch-worker")] == [2]


async def test_the_lanes_setting_replaces_their_measurement(make_settings) -> None:
    settings = make_settings(models=["udnie"], batch_policy="measure", policy_sizes=[32],
                             policy_budget_s=2, lanes=2, cache_bytes=0)
    async with running(settings) as r:
        (model,) = (await r.client.get("/v1/models")).json()["models"]
        policy = model["policy"]
        assert policy["source"] == "measured" and policy["sizes"][0]["side"] == 32
        assert policy["lanes"] == 2 and policy["lanes_images_per_s"] == {}   # not measured
        assert await r.metric("service_policy_lanes") == 2
        answers = await asyncio.gather(*(
            r.client.post("/v1/stylize?style=udnie", content=images.png(24, 24, seed=i),
                          headers={"content-type": "image/png"}) for i in range(4)))
        assert [a.status_code for a in answers] == [200] * 4


async def test_service_measures_once_per_architecture_and_reports_the_policy(
        make_settings) -> None:
    settings = make_settings(models=["udnie", "candy"], batch_policy="measure",
                             policy_sizes=[32], policy_budget_s=2, max_batch_size=4,
                             cache_bytes=0)
    data = images.png(30, 26, seed=3)
    async with running(settings) as r:
        models = {m["name"]: m for m in (await r.client.get("/v1/models")).json()["models"]}
        udnie, candy = models["udnie"]["policy"], models["candy"]["policy"]
        assert udnie["source"] == "measured" and candy["source"] == "shared with udnie"
        (size,) = udnie["sizes"]
        assert size["side"] == 32 and 1 <= size["max_batch"] <= 4
        assert size["path"] in size["path_ms"] and size["path"] not in udnie["rejected"]
        assert udnie["errors"][size["path"]] <= 1
        assert udnie["lanes"] >= 1 and udnie["threads"] >= 1
        assert await r.metric("service_policy_max_batch", model="udnie",
                              side="32") == size["max_batch"]
        assert await r.metric("service_policy_lanes") == udnie["lanes"]
        measured = await r.client.post("/v1/stylize?style=udnie", content=data,
                                       headers={"content-type": "image/png"})
    async with running(make_settings(models=["udnie"], cache_bytes=0)) as r:
        plain = await r.client.post("/v1/stylize?style=udnie", content=data,
                                    headers={"content-type": "image/png"})
    a = np.asarray(images.decode(measured.content), dtype=int)
    b = np.asarray(images.decode(plain.content), dtype=int)
    assert a.shape == b.shape == (26, 30, 3) and np.abs(a - b).max() <= 1
