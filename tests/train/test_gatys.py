"""Stylisation by optimisation: it descends the style objective and reports as asked."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import data_root
from train import gatys
from train.__main__ import main
from train.config import StyleConfig
from train.losses import feature_loss, style_loss, tv_loss
from train.vgg import LossNetwork
from train.vgg_weights import CONVS, export, resolve

W = 5.0   # lambda_s of these tests: style and content both move on a random VGG

DATA = data_root()


def random_vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """VGG-16-shaped convs with He-initialised random weights: fast, no download needed."""
    g = torch.Generator().manual_seed(seed)
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512]
    state, c_in = {}, 3
    for i, c_out in enumerate(channels[:len(CONVS["vgg16"])]):
        state[f"conv{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * (
            2 / (9 * c_in)) ** 0.5
        state[f"conv{i}.bias"] = torch.zeros(c_out)
        c_in = c_out
    return state


@pytest.fixture(scope="module")
def vgg() -> LossNetwork:
    torch.set_num_threads(1)
    return LossNetwork("vgg16", random_vgg_state())


def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    content = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=32,
                                              mode="bilinear").clamp(0, 1)
    style = torch.rand(1, 3, 32, 32, generator=g)
    return content, style


def objective(vgg: LossNetwork, x: torch.Tensor, content: torch.Tensor, style: torch.Tensor
              ) -> float:
    """The style-training objective with StyleConfig's default weights, spelled out."""
    cfg = StyleConfig()
    layers = cfg.style_layers.split(",")
    fx, fc, fs = vgg(x), vgg(content), vgg(style)
    grams = [gatys.gram(getattr(fs, n)) for n in layers]
    return float(cfg.content_weight * feature_loss(fx.relu2_2, fc.relu2_2)
                 + W * style_loss([getattr(fx, n) for n in layers], grams)
                 + cfg.tv_weight * tv_loss(x))


def test_defaults_come_from_style_config():
    cfg = StyleConfig()
    assert (cfg.content_weight, cfg.tv_weight) == (gatys.CONTENT_WEIGHT, gatys.TV_WEIGHT)
    parser = argparse.ArgumentParser()
    gatys.add_parser_arguments(parser)
    args = parser.parse_args(["--content", "c", "--style", "s"])
    assert (args.content_weight, args.style_weight, args.tv_weight, args.init) == (
        cfg.content_weight, cfg.style_weight, cfg.tv_weight, "noise")


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_ten_iterations_decrease_the_objective(vgg, optimizer):
    content, style = images()
    start = torch.rand(content.shape, generator=torch.Generator().manual_seed(0))  # the init
    with torch.no_grad():
        initial = objective(vgg, start, content, style)
    image, history = gatys.stylize_by_optimisation(content, style, vgg, 10, style_weight=W,
                                                   optimizer=optimizer)
    assert [h["iteration"] for h in history] == list(range(1, 11))
    assert [h["evaluations"] for h in history] == list(range(1, 11))
    with torch.no_grad():
        final = objective(vgg, image, content, style)
    assert history[-1]["total"] == pytest.approx(final, rel=1e-4)
    assert history[-1]["total"] == pytest.approx(
        history[-1]["content"] + history[-1]["style"] + history[-1]["tv"], rel=1e-6)
    assert final < 0.8 * initial
    totals = [h["total"] for h in history]  # the best image so far: never worse
    assert totals == sorted(totals, reverse=True) and totals[-1] < totals[0]
    assert image.shape == content.shape and image.min() >= 0 and image.max() <= 1


def test_gram_targets_are_the_same_as_the_style_image(vgg):
    content, style = images()
    targets = gatys.style_targets(vgg, style)
    a, _ = gatys.stylize_by_optimisation(content, style, vgg, 3, style_weight=W,
                                         init="content")
    b, _ = gatys.stylize_by_optimisation(content, targets, vgg, 3, style_weight=W,
                                         init="content")
    assert torch.equal(a, b)


def test_content_init_starts_from_the_content_image(vgg):
    content, style = images()
    image, _ = gatys.stylize_by_optimisation(content, style, vgg, 1, style_weight=W,
                                             init="content",
                                             optimizer="adam", lr=1e-3)
    assert (image - content).abs().max() <= 1e-3 + 1e-6  # one Adam step moves <= lr


def test_cli_reports_requested_iterations(vgg, tmp_path, capsys):
    weights = tmp_path / "vgg.safetensors"
    export("vgg16", random_vgg_state(), weights)
    content, style = images()
    for name, im in (("c.png", content), ("s.png", style)):
        array = (im[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(tmp_path / name)
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    assert main(["gatys", "--content", str(tmp_path / "c.png"), "--style",
                 str(tmp_path / "s.png"), "--iterations", "10", "--report-at", "5,10,50",
                 "--image-size", "32", "--vgg-weights", str(weights), "--device", "cpu",
                 "--style-weight", str(W),
                 "--out", str(out), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    reports = data["reports"]
    assert [r["iteration"] for r in reports] == [5, 10]  # 50 is past the last iteration
    assert reports[1]["total"] < reports[0]["total"]
    assert 0 < reports[0]["seconds"] < reports[1]["seconds"]
    assert {"content", "style", "tv", "total", "evaluations"} <= set(reports[0])
    assert data["settings"]["size"] == [32, 32]
    assert Image.open(out).size == (32, 32)
    assert "iteration" in capsys.readouterr().out


@pytest.mark.skipif(not (DATA / "styles").is_dir(), reason="shared data not available")
def test_lbfgs_from_the_content_image_descends_with_the_real_vgg():
    """Regression: with torch's default tiny first step, L-BFGS went from 2.9e11 to 5e13 here."""
    try:
        vgg = LossNetwork(*resolve())
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"no ImageNet VGG weights: {e}")
    torch.set_num_threads(1)
    content = gatys.load_image(DATA / "content-images" / "chicago.jpg", 128)
    style = gatys.load_image(DATA / "styles" / "starry_night.jpg", 128)
    _, history = gatys.stylize_by_optimisation(content, style, vgg, 6, style_weight=W,
                                               init="content")
    totals = [h["total"] for h in history]
    assert all(b < a for a, b in zip(totals, totals[1:], strict=False))
    assert totals[-1] < 0.25 * totals[0]
