"""Batches bounded by their largest intermediate tensor (service/activations.py): shape
propagation on the meta device, the 2^31-element bound of 32-bit index math, and a memory
budget, lowered here so that the CPU shows what a GPU would hit."""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import nn

from nets.multistyle_net import MultiStyleNet
from nets.style_net import StyleNet
from nets.superres_net import SuperResNet
from service.activations import INDEX_LIMIT, ActivationSizes, batch_limit
from tests.helpers import images
from tests.helpers.models import hold
from tests.helpers.server import running, until

PNG = {"content-type": "image/png"}


def largest_on_meta(net: nn.Module, height: int, width: int, *mix: torch.Tensor) -> int:
    """The largest layer output of one forward pass, measured directly at this size."""
    meta, sizes = net.to("meta"), [height * width * 3]
    for layer in meta.modules():
        layer.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
    with torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"), *(m.to("meta") for m in mix))
    return max(sizes)


def test_the_largest_tensors_are_the_papers_shapes() -> None:
    # style, resize-convolutions: the 64-channel map upsampled to full resolution
    style = ActivationSizes(StyleNet(norm="instance", upsample="resize_conv"))
    assert style.per_image(256, 256) == 64 * 256 * 256
    # transposed convolutions: the first stage, 32 channels at full resolution
    assert ActivationSizes(StyleNet()).per_image(256, 256) == 32 * 256 * 256
    # x8: 64 channels at the output resolution
    assert ActivationSizes(SuperResNet(8)).per_image(256, 256) == 64 * 2048 * 2048
    multi = ActivationSizes(MultiStyleNet(["a", "b"]), styles=2)
    assert multi.per_image(128, 128) == 64 * 128 * 128


@pytest.mark.parametrize("height, width", [(37, 50), (61, 45), (16, 16), (300, 129)])
def test_the_estimate_is_never_below_the_real_size(height: int, width: int) -> None:
    for net, mix in [(StyleNet(norm="instance", upsample="resize_conv"), ()),
                     (SuperResNet(4, norm="none", residual=True), ()),
                     (MultiStyleNet(["a", "b", "c"]), (torch.full((1, 3), 1 / 3),))]:
        estimate = ActivationSizes(net, styles=len(mix[0][0]) if mix else 0)
        assert estimate.per_image(height, width) >= largest_on_meta(net, height, width, *mix)


def test_eight_256_pixel_requests_to_sr_x8_make_seven_and_one() -> None:
    """The issue's failing case: 8 x 64 x 2048 x 2048 = 2^31 elements, one over the bound."""
    per_image = 64 * 2048 * 2048
    assert 8 * per_image == 2**31 and INDEX_LIMIT == 2**31 - 1
    assert batch_limit(per_image, 2, None) == 7
    assert batch_limit(per_image, 2, 3 * per_image * 2) == 3      # a budget of 3 images' bytes
    assert batch_limit(per_image, 4, per_image) == 1               # one request always runs


async def test_the_batcher_never_forms_a_batch_over_the_bound(make_settings) -> None:
    """A budget of two 64x64 images' largest tensor (the test store's style network: 32
    channels at full resolution, float32): five queued requests of that size run as 2, 2 and 1,
    and each is answered."""
    budget = 2 * 32 * 64 * 64 * 4 + 1
    async with running(make_settings(models=["udnie"], max_activation_bytes=budget)) as r:
        assert r.services.registry.max_batch(("udnie", 64, 64)) == 2
        assert r.services.registry.max_batch(("udnie", 128, 128)) == 1  # alone, over budget
        gate = hold(r.services, "udnie")
        first = asyncio.create_task(r.client.post("/v1/stylize?style=udnie", headers=PNG,
                                                  content=images.png(64, 64, seed=0)))
        await asyncio.to_thread(gate.entered.wait, 30)
        rest = [asyncio.create_task(r.client.post("/v1/stylize?style=udnie", headers=PNG,
                                                  content=images.png(64, 64, seed=i)))
                for i in range(1, 6)]
        await until(lambda: r.services.batcher.queued == 5, what="5 queued requests")
        gate.release.set()
        answers = await asyncio.gather(first, *rest)
        assert [a.status_code for a in answers] == [200] * 6
        assert gate.batches == [1, 2, 2, 1]
