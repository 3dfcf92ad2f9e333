"""`--style-weight auto`: the rule against a hand computation, the photos it reads, the flag,
and training runs that record the weight they resolved."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import ModelStore
from tests.train.test_gatys import random_vgg_state
from train import multistyle_training, style_training, style_weight
from train.config import MultiStyleConfig, StyleConfig, add_arguments, from_args
from train.losses import gram
from train.vgg import LossNetwork
from train.vgg_weights import export

LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


@pytest.fixture(scope="module")
def vgg() -> LossNetwork:
    return LossNetwork("vgg16", random_vgg_state())


def test_rule_is_the_constant_over_the_photos_mean_style_loss(vgg):
    g = torch.Generator().manual_seed(0)
    photos, painting = torch.rand(3, 3, 32, 32, generator=g), torch.rand(1, 3, 40, 24, generator=g)
    with torch.no_grad():
        fp, fs = vgg(photos), vgg(painting)
    # eq. 4 summed over the layers, per photo, then the mean over the photos
    per_photo = [sum(float((gram(getattr(fp, n)[i:i + 1]) - gram(getattr(fs, n))).pow(2).sum())
                     for n in LAYERS) for i in range(3)]
    want = style_weight.UNSTYLED / np.mean(per_photo)
    assert style_weight.auto_style_weight(vgg, painting, photos) == pytest.approx(want, rel=1e-5)


def test_a_painting_far_from_the_photos_gets_a_smaller_weight(vgg):
    g = torch.Generator().manual_seed(1)
    photos = torch.rand(2, 3, 32, 32, generator=g) * 0.2 + 0.4
    near = photos[:1].clone()
    far = torch.zeros(1, 3, 32, 32)
    far[:, 0, ::2] = 1.0    # red stripes
    assert (style_weight.auto_style_weight(vgg, far, photos)
            < style_weight.auto_style_weight(vgg, near, photos) / 10)


def test_calibration_photos_are_spread_over_the_folder_and_cropped(tmp_path, monkeypatch):
    monkeypatch.setattr(style_weight, "PHOTOS", 4)
    monkeypatch.setattr(style_weight, "CROP", 16)
    for i in range(8):   # flat photos, grey level i * 10, of different shapes
        Image.new("RGB", (40 + 4 * i, 30), (i * 10,) * 3).save(tmp_path / f"p{i}.png")
    photos = style_weight.calibration_photos(tmp_path, image_size=24)
    assert photos.shape == (4, 3, 16, 16)
    levels = [round(float(p.mean()) * 255) for p in photos]
    assert levels == [0, 20, 40, 60]    # p0, p2, p4, p6
    assert style_weight.calibration_photos(tmp_path, image_size=12).shape == (4, 3, 12, 12)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        style_weight.calibration_photos(tmp_path / "empty", 24)


def parse(argv: list[str]) -> StyleConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser, StyleConfig)
    cfg = from_args(StyleConfig, parser.parse_args(argv))
    assert isinstance(cfg, StyleConfig)
    return cfg


def test_the_flag_takes_auto_or_a_number(capsys):
    assert parse([]).style_weight == "auto"
    assert parse(["--style-weight", "auto"]).style_weight == "auto"
    assert parse(["--style-weight", "2e-5"]).style_weight == 2e-5
    with pytest.raises(SystemExit) as e:
        parse(["--style-weight", "strong"])
    assert e.value.code == 2
    assert "--style-weight: invalid weight value: 'strong'" in capsys.readouterr().err


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """Random VGG weights on disk, tiny photos, two paintings; the rule on 2 photos of 16 px."""
    monkeypatch.setattr(style_weight, "PHOTOS", 2)
    monkeypatch.setattr(style_weight, "CROP", 16)
    weights = tmp_path / "vgg.safetensors"
    export("vgg16", random_vgg_state(), weights)
    photos, styles = tmp_path / "photos", tmp_path / "styles"
    photos.mkdir()
    styles.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(photos / f"{i}.png")
    for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        stripes = np.full((32, 32, 3), 128, np.uint8)
        stripes[::4] = colour
        Image.fromarray(stripes).save(styles / f"{name}.jpg")
    base = dict(data=str(photos), store=str(tmp_path / "store"), image_size=32, batch_size=2,
                iterations=2, checkpoint_dir=str(tmp_path / "runs"), device="cpu", amp="none",
                save_dtype="float32", vgg_weights=str(weights))
    return base, styles


def rule(base: dict, painting) -> float:
    vgg = style_training.load_loss_network(argparse.Namespace(vgg_weights=base["vgg_weights"]))
    photos = style_weight.calibration_photos(base["data"], base["image_size"])
    return style_weight.auto_style_weight(
        vgg, style_training.load_style_image(str(painting), base["image_size"]), photos)


def test_style_run_records_the_weight_auto_resolved_to(setup):
    base, styles = setup
    cfg = StyleConfig(**base, name="s", style_image=str(styles / "a.jpg"), norm="instance",
                      upsample="resize_conv", padding="reflect", style_weight="auto")
    style_training.run(cfg)
    recorded = ModelStore(base["store"]).manifest("s").training["config"]["style_weight"]
    assert recorded == pytest.approx(rule(base, styles / "a.jpg"), rel=1e-6)


def test_multistyle_run_resolves_each_auto_weight(setup):
    base, styles = setup
    cfg = MultiStyleConfig(**base, styles="a,b", style_dir=str(styles), style_weights="auto,3e-6")
    multistyle_training.run(cfg)
    recorded = ModelStore(base["store"]).manifest("multistyle").training["config"]
    a, b = (float(w) for w in recorded["style_weights"].split(","))
    assert a == pytest.approx(rule(base, styles / "a.jpg"), rel=1e-6) and b == 3e-6


def test_objective_refuses_an_unresolved_weight(vgg):
    with pytest.raises(ValueError, match="resolve --style-weight auto"):
        style_training.StyleObjective(vgg, torch.rand(1, 3, 16, 16), StyleConfig())
