"""Conditional instance norm: one network, many styles, blends, mixed-style batches."""

from __future__ import annotations

import io
import json
from pathlib import Path

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


def test_with_style_keeps_the_others_and_starts_the_new_one_at_their_mean(net):
    grown = net.with_style("d").eval()
    assert grown.styles == ["a", "b", "c", "d"] and grown.options() == net.options()
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        for i in range(3):
            old = net(x, net.one_hot(torch.tensor([i, i])))
            assert torch.equal(grown(x, grown.one_hot(torch.tensor([i, i]))), old)
        equal_blend = net(x, torch.full((2, 3), 1 / 3))
        assert torch.allclose(grown(x, grown.one_hot(torch.tensor([3, 3]))), equal_blend,
                              atol=1e-5)
    with pytest.raises(ValueError, match="already one of"):
        net.with_style("b")


def test_without_style_drops_its_rows_and_keeps_the_others(net):
    kept = net.without_style("b").eval()
    assert kept.styles == ["a", "c"] and kept.options() == net.options()
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        for old, new in ((0, 0), (2, 1)):
            assert torch.equal(kept(x, kept.one_hot(torch.tensor([new, new]))),
                               net(x, net.one_hot(torch.tensor([old, old]))))
    with pytest.raises(ValueError, match="not one of"):
        net.without_style("z")


def stored(net: MultiStyleNet, tmp_path: Path) -> tuple[ModelStore, Path]:
    """A store holding `net` as multistyle after 100 steps, and an empty photo folder."""
    store = ModelStore(tmp_path / "store")
    store.save(net, name="multistyle", task="style", architecture="multistyle",
               options={"styles": net.styles, "upsample": "resize_conv", "padding": "reflect"},
               iterations=100)
    photos = tmp_path / "photos"
    photos.mkdir()
    return store, photos


def test_add_style_trains_only_the_new_style(tmp_path, net, capsys):
    store, photos = stored(net, tmp_path)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(photos / f"{i}.png")
    painting = tmp_path / "stripes.png"
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[::4] = (200, 40, 40)
    Image.fromarray(stripes).save(painting)
    cfg = MultiStyleConfig(add_style=str(painting), name="stripes", data=str(photos),
                           store=str(store.root), image_size=32, batch_size=2, iterations=30,
                           checkpoint_dir=str(tmp_path / "runs"), device="cpu", amp="none",
                           save_dtype="float32", add_style_lr=2e-2, style_weight=1e-4,
                           tv_weight=1e-2, progress_json=True)
    trained, result = multistyle_training.run(cfg)
    progress = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                if line.startswith("{")]
    # every 25 steps and the last
    assert [p["step"] for p in progress] == [25, 30] and progress[0]["iterations"] == 30
    assert set(progress[0]["losses"]) == {"content", "style", "tv", "total"}
    assert sum(result.history[-4:]) < sum(result.history[:4])
    loaded, manifest = store.load("multistyle")
    assert manifest.options["styles"] == ["a", "b", "c", "stripes"]
    assert manifest.iterations == 130 and manifest.training["init_from"]["iterations"] == 100
    assert (tmp_path / "runs" / "multistyle+stripes").is_dir()
    assert Image.open(io.BytesIO(store.painting("multistyle", "stripes"))).size == (256, 256)
    before, after = net.state_dict(), loaded.state_dict()
    for key, value in after.items():                      # nothing shared moved ...
        if key.endswith((".scale", ".shift")):
            assert torch.equal(value[:3], before[key]), key
        else:
            assert torch.equal(value, before[key]), key
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():                                  # ... the new style did
        start = net.with_style("stripes").eval()(x, torch.tensor([[0.0, 0, 0, 1]]))
        assert not torch.allclose(loaded(x, torch.tensor([[0.0, 0, 0, 1]])), start, atol=1e-3)


def test_a_run_out_of_time_stops_and_reports_its_last_step(tmp_path, net, capsys):
    store, photos = stored(net, tmp_path)
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / "grey.png")
    painting = tmp_path / "red.png"
    Image.fromarray(np.full((64, 64, 3), (200, 40, 40), np.uint8)).save(painting)
    cfg = MultiStyleConfig(add_style=str(painting), name="red", data=str(photos),
                           store=str(store.root), image_size=32, batch_size=2, iterations=30,
                           checkpoint_dir=str(tmp_path / "runs"), device="cpu", amp="none",
                           style_weight=1e-4, time_limit_s=1e-6, progress_json=True)
    _, result = multistyle_training.run(cfg)
    progress = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                if line.startswith("{")]
    assert result.steps == 1 and [p["step"] for p in progress] == [1]
    assert store.manifest("multistyle").iterations == 101
