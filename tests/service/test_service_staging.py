"""Pinned staging and the copy stream on the CPU (service/staging.py): buffer reuse and its
bound per thread, the order of the copies, the compute and the events on fake streams, one
lane of streams per thread; and the lanes the registry gives the batcher on CUDA."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service import registry as registry_module
from service.registry import Registry
from service.staging import HostBuffers, Staging


def test_buffers_are_reused_per_thread_and_shape_and_bounded() -> None:
    buffers = HostBuffers(keep=2)
    assert buffers.pin is torch.cuda.is_available()
    u8 = lambda n: ((n, 4, 4, 3), torch.uint8)  # noqa: E731
    a = buffers.get(*u8(2))
    assert a.shape == (2, 4, 4, 3) and a.dtype == torch.uint8
    assert buffers.get(*u8(2)) is a
    f = buffers.get((2, 4, 4, 3), torch.float32)                    # the dtype is in the key
    assert f is not a and f.dtype == torch.float32
    assert buffers.get(*u8(2)) is a                                 # a: most recently used
    b = buffers.get(*u8(1))
    assert list(buffers.held()) == [u8(2), u8(1)]                   # float32 dropped
    buffers.get(*u8(2))
    buffers.get(*u8(3))
    assert list(buffers.held()) == [u8(2), u8(3)]                   # b dropped
    assert buffers.get(*u8(2)) is a and buffers.get(*u8(1)) is not b
    theirs: list[torch.Tensor] = []
    worker = threading.Thread(target=lambda: theirs.append(buffers.get((2, 4, 4, 3),
                                                                       torch.uint8)))
    worker.start()
    worker.join()
    assert theirs[0] is not a
    assert not HostBuffers(pin=False).get((1,), torch.uint8).is_pinned()


class Stream:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def wait_event(self, event: Event) -> None:
        self.log.append(f"{self.name} waits {event.name}")


class Event:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def record(self, stream: Stream) -> None:
        self.log.append(f"{self.name} on {stream.name}")

    def synchronize(self) -> None:
        self.log.append(f"host waits {self.name}")


class FakeStreams:
    """Streams named compute-N and copy-N, events named by their role; every call logged."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.current = "host"
        self.made = 0
        self.events = iter(["uploaded", "computed", "downloaded"] * 10)

    def stream(self) -> Stream:
        self.made += 1
        return Stream(f"{'compute' if self.made % 2 else 'copy'}-{(self.made + 1) // 2}",
                      self.log)

    @contextlib.contextmanager
    def use(self, stream: Stream) -> Iterator[None]:
        self.current = stream.name
        yield
        self.current = "host"

    def event(self) -> Event:
        return Event(next(self.events), self.log)


def test_upload_compute_download_are_ordered_by_events_and_the_host_waits_once() -> None:
    streams = FakeStreams()
    staging = Staging(torch.device("cpu"), HostBuffers(pin=False), streams)
    host = staging.buffers.get((2, 3), torch.float32).copy_(torch.arange(6.0).reshape(2, 3))

    def compute(x: torch.Tensor) -> torch.Tensor:
        streams.log.append(f"compute on {streams.current}")
        return x * 2

    out = staging.run([host], compute)
    assert streams.log == [
        "uploaded on copy-1",
        "compute-1 waits uploaded", "compute on compute-1", "computed on compute-1",
        "copy-1 waits computed", "downloaded on copy-1",
        "host waits downloaded"]
    # the output lands in this thread's buffer for its shape (here the input's: the upload
    # is done by the time the download starts), and again at the next batch
    assert out.tolist() == [[0, 2, 4], [6, 8, 10]]
    assert out is staging.buffers.get((2, 3), torch.float32)
    assert staging.run([out], lambda x: x + 1) is out and streams.made == 2


def test_each_thread_has_its_own_streams() -> None:
    streams = FakeStreams()
    staging = Staging(torch.device("cpu"), HostBuffers(pin=False), streams)
    seen: list[str] = []

    def compute(x: torch.Tensor) -> torch.Tensor:
        seen.append(streams.current)
        return x

    staging.run([torch.zeros(1)], compute)
    worker = threading.Thread(target=staging.run, args=([torch.zeros(1)], compute))
    worker.start()
    worker.join()
    staging.run([torch.zeros(1)], compute)
    assert seen == ["compute-1", "compute-2", "compute-1"]


@pytest.mark.parametrize("device, setting, lanes", [("cpu", 0, 1), ("cpu", 2, 2),
                                                    ("cuda", 0, 2), ("cuda", 3, 3)])
def test_cuda_runs_two_lanes_unless_told(store_root: Path, monkeypatch: pytest.MonkeyPatch,
                                         device: str, setting: int, lanes: int) -> None:
    """On CUDA two batches at once by default: one's copies overlap the other's compute."""
    monkeypatch.setattr(registry_module, "resolve_device", lambda _: torch.device(device))
    registry = Registry(store_root, device=device, dtype="float16", lanes=setting)
    assert registry.lanes == lanes
    assert (registry.staging is not None) == (device == "cuda")
    if device == "cuda":
        assert registry.base_path == "fp16"
