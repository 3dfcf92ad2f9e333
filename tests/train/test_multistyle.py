"""Conditional instance norm: one network, many styles, blends, mixed-style batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import ModelStore
from nets.multistyle_net import ConditionalInstanceNorm, MultiStyleNet
from nets.style_net import StyleNet
from train import multistyle_training
from train.config import MultiStyleConfig

OPTIONS = {"norm": "instance", "upsample": "resize_conv", "padding": "reflect"}


@pytest.fixture
def net() -> MultiStyleNet:
    torch.manual_seed(0)
    net = MultiStyleNet(["a", "b", "c"]).eval()
    with torch.no_grad():  # distinct styles
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.scale.normal_(1, 0.3)
                m.shift.normal_(0, 0.3)
    return net


def test_any_size(net):
    x = torch.rand(2, 3, 33, 18)
    assert net(x, net.one_hot(torch.tensor([0, 2]))).shape == (2, 3, 33, 18)


def test_mixed_style_batch_equals_each_alone(net):
    x = torch.rand(3, 3, 32, 40)
    with torch.no_grad():
        batch = net(x, net.one_hot(torch.tensor([0, 1, 2])))
        alone = [net(x[i:i + 1], net.one_hot(torch.tensor([i]))) for i in range(3)]
    assert torch.allclose(batch, torch.cat(alone), atol=1e-5)


def test_blend_mixes_normalisation_parameters(net):
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        blended = net(x, torch.tensor([[0.7, 0.3, 0.0]]))
        for m in net.modules():  # a network whose style "a" holds the mixed parameters
            if isinstance(m, ConditionalInstanceNorm):
                m.scale[0] = 0.7 * m.scale[0] + 0.3 * m.scale[1]
                m.shift[0] = 0.7 * m.shift[0] + 0.3 * m.shift[1]
        mixed_params = net(x, net.one_hot(torch.tensor([0])))
    assert torch.allclose(blended, mixed_params, atol=1e-6)


def test_mix_shape_is_checked(net):
    with pytest.raises(ValueError, match=r"mix must be \(1, 3\)"):
        net(torch.rand(1, 3, 8, 8), torch.ones(1, 2))


def test_init_from_single_reproduces_it():
    torch.manual_seed(1)
    single = StyleNet(**OPTIONS).eval()
    multi = MultiStyleNet(["x", "y"]).eval()
    multi.init_from_single(single)
    x = torch.rand(1, 3, 36, 28)
    with torch.no_grad():
        assert torch.allclose(multi(x, multi.one_hot(torch.tensor([1]))), single(x), atol=1e-6)


def test_distilled_run_learns_and_stores(tmp_path):
    teachers = ModelStore(tmp_path / "teachers")
    for i, name in enumerate(["a", "b"]):
        torch.manual_seed(i)
        teachers.save(StyleNet(**OPTIONS), name=name, task="style", architecture="style",
                      options=OPTIONS)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(photos / f"{i}.png")
    cfg = MultiStyleConfig(styles="a,b", teachers=str(tmp_path / "teachers"), data=str(photos),
                           store=str(tmp_path / "store"), image_size=32, batch_size=2,
                           iterations=12, checkpoint_dir=str(tmp_path / "runs"), device="cpu",
                           amp="none", save_dtype="float32", lr=3e-3)
    net, result = multistyle_training.run(cfg)
    assert sum(result.history[-4:]) < sum(result.history[:4])
    loaded, manifest = ModelStore(tmp_path / "store").load("multistyle")
    assert manifest.architecture == "multistyle" and manifest.options["styles"] == ["a", "b"]
    x = torch.rand(2, 3, 20, 20)
    mix = torch.tensor([[1.0, 0.0], [0.2, 0.8]])
    with torch.no_grad():
        assert torch.equal(loaded(x, mix), net.eval()(x, mix))
