"""Pinned staging and a copy stream: a batch's copies overlap another batch's compute (CUDA).

Why: from pageable host memory a `non_blocking` copy is synchronous, and on one stream the next
batch's upload waits for the previous batch's download. Here each batch worker thread (a lane
of the batcher) has its own compute stream and copy stream, and host buffers in page-locked
memory, so with two lanes batch k+1 uploads and batch k-1 downloads while batch k computes:

1. the input is written into this thread's pinned buffer for its shape and uploaded with
   `non_blocking=True` on the copy stream; an event marks the end of the upload;
2. the compute stream waits on that event and runs the batch; an event marks its end;
3. the copy stream waits on that event and downloads the output into a pinned buffer;
4. the host waits on the download's event only.

The host waits for the download before `run` returns, so a thread's streams are idle between
its batches: a staging buffer is never rewritten while a copy reads it, and a device tensor is
never freed (for the allocator to hand out again) while another stream still uses it.

Buffers are reused per (thread, shape, dtype), at most `keep` per thread, the least recently
used dropped. The CUDA calls go through `CudaStreams`, which the CPU tests replace with fakes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, cast

import torch

KEEP = 4   # staging buffers per thread: a few shapes in turn


class HostBuffers:
    """This thread's host buffers by (shape, dtype), pinned where CUDA is available."""

    def __init__(self, keep: int = KEEP, pin: bool | None = None) -> None:
        self.keep = keep
        self.pin = torch.cuda.is_available() if pin is None else pin
        self._local = threading.local()

    def get(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A buffer of `shape` and `dtype` (its contents are whatever was last written)."""
        mine = self.held()
        key = (tuple(shape), dtype)
        buffer = mine.pop(key, None)
        if buffer is None:
            buffer = torch.empty(key[0], dtype=dtype, pin_memory=self.pin)
        mine[key] = buffer
        while len(mine) > self.keep:
            mine.popitem(last=False)
        return buffer

    def held(self) -> OrderedDict[tuple[tuple[int, ...], torch.dtype], torch.Tensor]:
        """This thread's buffers, least recently used first."""
        if not hasattr(self._local, "buffers"):
            self._local.buffers = OrderedDict()
        return cast(OrderedDict[tuple[tuple[int, ...], torch.dtype], torch.Tensor],
                    self._local.buffers)


class Streams(Protocol):
    """What the pipeline needs of the device: streams, a way to make one current, events."""

    def stream(self) -> Any: ...
    def use(self, stream: Any) -> AbstractContextManager[Any]: ...
    def event(self) -> Any: ...


class CudaStreams:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def stream(self) -> torch.cuda.Stream:
        return torch.cuda.Stream(self.device)

    def use(self, stream: torch.cuda.Stream) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def event(self) -> torch.cuda.Event:
        return torch.cuda.Event()


class _Lane:
    """One thread's compute and copy streams and the events between them."""

    def __init__(self, streams: Streams) -> None:
        self.compute, self.copy = streams.stream(), streams.stream()
        self.uploaded, self.computed, self.downloaded = (streams.event() for _ in range(3))


class Staging:
    """Runs batches on `device` between a pinned upload and a pinned download (see above)."""

    def __init__(self, device: torch.device, buffers: HostBuffers | None = None,
                 streams: Streams | None = None) -> None:
        self.device = device
        self.buffers = buffers or HostBuffers()
        self.streams = streams or CudaStreams(device)
        self._local = threading.local()

    def run(self, inputs: Sequence[torch.Tensor],
            compute: Callable[..., torch.Tensor]) -> torch.Tensor:
        """`compute(*inputs on the device)` -> its output in a host buffer of this thread
        (valid until this thread's next batch of that shape: copy it out). `inputs` should be
        this thread's staging buffers (`buffers.get`), so that the upload is asynchronous."""
        lane = self._lane()
        with self.streams.use(lane.copy):
            on_device = [t.to(self.device, non_blocking=True) for t in inputs]
            lane.uploaded.record(lane.copy)
        with self.streams.use(lane.compute):
            lane.compute.wait_event(lane.uploaded)
            y = compute(*on_device)
            lane.computed.record(lane.compute)
        with self.streams.use(lane.copy):
            lane.copy.wait_event(lane.computed)
            out = self.buffers.get(y.shape, y.dtype)
            out.copy_(y, non_blocking=True)
            lane.downloaded.record(lane.copy)
        lane.downloaded.synchronize()
        return out

    def _lane(self) -> _Lane:
        if not hasattr(self._local, "lane"):
            self._local.lane = _Lane(self.streams)
        return cast(_Lane, self._local.lane)
