"""The CUDA graph pool's logic on the CPU (service/graphs.py): buckets and padding, capture on a
repeated shape, eviction by count and bytes, failed captures, the static inputs of a
multi-style network, event ordering and concurrent replays. A fake capture stands in for CUDA:
its "graph" recomputes the runner from the static inputs into the static output, which shares
a real graph's hazards (one static input and output per key). And the CUDA paths that
`service.execution` offers, built on the CPU."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

from nets.multistyle_net import MultiStyleNet
from nets.style_net import StyleNet
from service import execution
from service.graphs import Captured, GraphPool, bucket, pad_to
from service.registry import equal_weights


class Events:
    """Fake CUDA events: each event is a number; every call is logged, replays too."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.made = 0

    def new(self) -> int:
        self.made += 1
        return self.made

    def wait(self, event: int) -> None:
        self.log.append(("wait", event))

    def record(self, event: int) -> None:
        self.log.append(("record", event))

    def synchronize(self, event: int) -> None:
        self.log.append(("synchronize", event))


class FakeCapture:
    """Captures by running the runner once; replays recompute it from the static inputs."""

    def __init__(self, events: Events | None = None, nbytes: int = 100,
                 fail: tuple[int, int] | None = None, slow_s: float = 0.0) -> None:
        self.shapes: list[tuple[tuple[int, ...], ...]] = []
        self.inputs: list[tuple[torch.Tensor, ...]] = []     # the static inputs
        self.events, self.nbytes, self.fail, self.slow_s = events, nbytes, fail, slow_s

    def __call__(self, runner, inputs: tuple[torch.Tensor, ...]) -> Captured:  # noqa: ANN001
        if self.fail == tuple(inputs[0].shape[2:]):
            raise RuntimeError("operation not permitted when stream is capturing")
        self.shapes.append(tuple(tuple(t.shape) for t in inputs))
        self.inputs.append(inputs)
        output = runner(*inputs).clone()

        def replay() -> None:
            if self.events:
                self.events.log.append(("replay", 0))
            time.sleep(self.slow_s)     # a replay in flight: the static buffers are in use
            output.copy_(runner(*inputs))

        return Captured(replay, inputs, output, self.nbytes)


def per_image(x: torch.Tensor) -> torch.Tensor:
    """A network whose every output row depends on its own input row only (like instance
    norm): each image is normalised by its own mean."""
    return x - x.mean(dim=(1, 2, 3), keepdim=True) + 2 * x


def test_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert [bucket(n, 8) for n in range(10)] == [None, 1, 2, 4, 4, 8, 8, 8, 8, None]
    assert [bucket(n, 6) for n in (3, 4, 5, 6, 7)] == [4, 4, 6, 6, None]   # top bucket: 6
    x = torch.arange(6.0).reshape(3, 2)
    padded = pad_to(x, 5)
    assert padded.tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert torch.equal(pad_to(x, 3), x) and pad_to(x, 3) is not x


def test_padded_batches_give_each_image_the_output_it_has_alone() -> None:
    torch.manual_seed(0)
    net = StyleNet(norm="instance", upsample="resize_conv", padding="reflect").eval()
    runner = execution.TorchRunner(net, torch.float32)
    capture = FakeCapture()
    pool = GraphPool(runner, max_batch=8, capture_after=1, capture=capture, events=Events())
    images = torch.rand(8, 3, 20, 24)
    with torch.inference_mode():
        alone = torch.cat([net(images[i:i + 1]) for i in range(8)])
    for n in (1, 2, 3, 5, 8):
        out = pool(images[:n])
        assert out.shape == (n, 3, 20, 24)
        assert (out - alone[:n]).abs().max().item() < 1e-5
    assert [s[0] for s in capture.shapes] == [(b, 3, 20, 24) for b in (1, 2, 4, 8)]
    assert pool.keys() == [(20, 24, b) for b in (1, 2, 4, 8)]
    pool(images[:6])                                 # bucket 8 again: a replay
    assert len(capture.shapes) == 4 and pool.keys()[-1] == (20, 24, 8)
    (static,) = capture.inputs[-1]                   # padded with the last image
    assert torch.equal(static[:6], images[:6]) and torch.equal(static[6:], images[[5, 5]])


def test_a_shape_is_captured_at_its_second_use_and_over_the_largest_batch_never() -> None:
    capture = FakeCapture()
    pool = GraphPool(per_image, max_batch=4, capture=capture, events=Events())
    x = torch.rand(3, 3, 8, 8)
    expected = per_image(x)
    assert torch.allclose(pool(x), expected) and capture.shapes == []      # eager
    assert torch.allclose(pool(x), expected) and len(capture.shapes) == 1  # captured
    assert torch.allclose(pool(x), expected) and len(capture.shapes) == 1  # replayed
    big = torch.rand(5, 3, 8, 8)
    for _ in range(3):
        assert torch.allclose(pool(big), per_image(big))
    assert pool.keys() == [(8, 8, 4)]


def test_the_least_recently_used_graph_goes_first_by_count() -> None:
    events = Events()
    pool = GraphPool(per_image, max_batch=1, max_graphs=2, capture_after=1,
                     capture=FakeCapture(events), events=events)
    a, b, c = (torch.rand(1, 3, s, s) for s in (8, 9, 10))
    pool(a)
    pool(b)
    pool(a)                                   # a is now the most recently used
    events.log.clear()
    pool(c)
    assert pool.keys() == [(8, 8, 1), (10, 10, 1)]
    # b's entry (the second event made) waited for its last replay before it was dropped
    assert ("synchronize", 2) in events.log
    assert torch.allclose(pool(b), per_image(b))    # captured again
    assert pool.keys() == [(10, 10, 1), (9, 9, 1)]


def test_the_pool_is_bounded_by_bytes_and_a_graph_over_the_bound_runs_eagerly(
        caplog: pytest.LogCaptureFixture) -> None:
    sizes = {8: 100, 9: 100, 10: 100, 11: 500}

    class Sized(FakeCapture):
        def __call__(self, runner, inputs):  # noqa: ANN001, ANN204
            captured = super().__call__(runner, inputs)
            captured.nbytes = sizes[inputs[0].shape[2]]
            return captured

    capture = Sized()
    pool = GraphPool(per_image, max_batch=1, max_bytes=250, capture_after=1, capture=capture,
                     events=Events())
    for side in (8, 9, 10):
        pool(torch.rand(1, 3, side, side))
    assert pool.keys() == [(9, 9, 1), (10, 10, 1)] and pool.nbytes == 200
    huge = torch.rand(1, 3, 11, 11)
    with caplog.at_level(logging.WARNING, "service.graphs"):
        for _ in range(3):
            assert torch.allclose(pool(huge), per_image(huge))
    assert len(capture.shapes) == 4                 # 11 x 11 captured once, never kept
    assert pool.keys() == [(9, 9, 1), (10, 10, 1)]
    assert len(caplog.records) == 1 and "over 250" in caplog.records[0].getMessage()


def test_a_failed_capture_runs_eagerly_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    capture = FakeCapture(fail=(12, 12))
    pool = GraphPool(per_image, max_batch=4, capture_after=1, capture=capture, events=Events())
    with caplog.at_level(logging.WARNING, "service.graphs"):
        for n in (1, 2, 1, 3):
            x = torch.rand(n, 3, 12, 12)
            assert torch.allclose(pool(x), per_image(x))
    assert pool.keys() == [] and capture.shapes == []
    assert len(caplog.records) == 1 and "capture failed" in caplog.records[0].getMessage()
    y = torch.rand(2, 3, 8, 8)
    assert torch.allclose(pool(y), per_image(y)) and pool.keys() == [(8, 8, 2)]


def test_a_multistyle_networks_mix_is_a_static_input_too() -> None:
    torch.manual_seed(0)
    net = MultiStyleNet(["a", "b", "c"]).eval()
    runner = execution.TorchRunner(net, torch.float32)
    capture = FakeCapture()
    pool = GraphPool(runner, max_batch=4, capture_after=1, capture=capture, events=Events())
    x = torch.rand(3, 3, 16, 16)
    for mix in (torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]), torch.full((3, 3), 1 / 3)):
        with torch.inference_mode():
            expected = net(x, mix)
        assert (pool(x, mix) - expected).abs().max().item() < 1e-5
    assert capture.shapes == [((4, 3, 16, 16), (4, 3))]
    once = equal_weights(pool, 3)                    # as the policy times it
    assert once(x).shape == (3, 3, 16, 16)


def test_a_replay_waits_for_the_last_use_and_records_its_own() -> None:
    events = Events()
    pool = GraphPool(per_image, max_batch=2, capture_after=1, capture=FakeCapture(events),
                     events=events)
    x = torch.rand(2, 3, 8, 8)
    pool(x)
    events.log.clear()
    pool(x)
    assert events.log == [("wait", 1), ("replay", 0), ("record", 1)]


def test_replays_in_and_out_of_inference_mode() -> None:
    pool = GraphPool(per_image, max_batch=2, capture_after=1, capture=FakeCapture(),
                     events=Events())
    x = torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        pool(x)                     # captured here: the static buffers are inference tensors
    assert torch.allclose(pool(x), per_image(x))    # the policy times outside it


def test_concurrent_replays_of_one_graph_each_get_their_own_output() -> None:
    pool = GraphPool(per_image, max_batch=4, capture_after=1,
                     capture=FakeCapture(slow_s=0.002), events=Events())
    inputs = [torch.rand(4, 3, 8, 8) for _ in range(2)]
    pool(inputs[0])
    wrong: list[int] = []

    def replay(i: int) -> None:
        for _ in range(20):
            if not torch.allclose(pool(inputs[i]), per_image(inputs[i])):
                wrong.append(i)

    threads = [threading.Thread(target=replay, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and pool.keys() == [(8, 8, 4)]


def test_cuda_paths_are_named_by_dtype_layout_rewrite_and_graphs() -> None:
    assert set(execution.cuda_paths("auto")) == {
        "fp16", "fp16_rewrite", "fp16_channels_last", "fp16_channels_last_rewrite",
        "fp16_graphs", "fp16_rewrite_graphs",
        "fp32", "fp32_rewrite", "channels_last", "channels_last_rewrite", "fp32_graphs"}
    assert set(execution.cuda_paths("float32")) == {
        "fp32", "fp32_rewrite", "channels_last", "channels_last_rewrite", "fp32_graphs"}
    assert "bf16_channels_last_rewrite" in execution.cuda_paths("bfloat16")
    cuda = torch.device("cuda")
    for dtype in (torch.float16, torch.float32, torch.bfloat16):   # what run_module feeds
        base = execution.base_path(cuda, dtype)
        assert base in execution.cuda_paths("auto") or dtype == torch.bfloat16
        assert execution.memory_format(base) == torch.contiguous_format
    assert execution.base_path(cuda, torch.float16) == "fp16"
    assert execution.memory_format("fp16_channels_last_rewrite") == torch.channels_last


def test_cuda_candidates_are_every_path_but_the_base_built_as_named() -> None:
    """Built on the CPU (nothing CUDA happens until a runner runs); "fp16" runs the module
    itself (the registry's base path)."""
    net = StyleNet(norm="instance", upsample="resize_conv", padding="reflect").eval()
    runners = execution.candidates(net, torch.device("cuda"), "auto", torch.float16,
                                   max_batch=16)
    assert set(runners) == set(execution.cuda_paths("auto")) - {"fp16"}
    graphs = {name for name, r in runners.items() if isinstance(r, GraphPool)}
    assert graphs == {"fp16_graphs", "fp16_rewrite_graphs", "fp32_graphs"}
    assert all(r.max_batch == 16 for name, r in runners.items() if name in graphs)
    for name, r in runners.items():
        eager = r.runner if isinstance(r, GraphPool) else r
        assert isinstance(eager, execution.TorchRunner)
        weight = next(eager.module.parameters())
        assert weight.dtype == (torch.float32 if "fp32" in name or name.startswith("channels")
                                else torch.float16)
        assert eager.channels_last == ("channels_last" in name)
        assert weight.is_contiguous(memory_format=execution.memory_format(name))
    assert set(execution.candidates(net, torch.device("cuda"), "auto", torch.float16,
                                    only={"fp32", "fp16"})) == {"fp32"}
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        assert (runners["fp32_rewrite"](x) - net(x)).abs().max().item() < 1e-4
