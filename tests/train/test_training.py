"""End-to-end training runs on a handful of tiny images: they finish, learn, store, resume."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import ModelStore, data_root
from train import style_training, superres_training
from train.config import StyleConfig, SuperResConfig

REPO = Path(__file__).resolve().parents[2]
STYLE = data_root() / "styles" / "udnie.jpg"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six smooth random 'photos' (blurred noise), so that content and texture both exist."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(6):
        noise = rng.random((12, 16, 3))
        im = Image.fromarray((noise * 255).astype(np.uint8)).resize((64, 48), Image.BICUBIC)
        im.save(root / f"p{i}.png")
    return root


@pytest.fixture
def style_image(tmp_path) -> Path:
    if STYLE.is_file():
        return STYLE
    path = tmp_path / "style.png"
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[::4] = (200, 40, 40)
    Image.fromarray(stripes).save(path)
    return path


def style_config(tmp_path, photos, style_image, **kw) -> StyleConfig:
    base = dict(data=str(photos), store=str(tmp_path / "store"), name="tiny_style",
                style_image=str(style_image), image_size=32, batch_size=2, iterations=20,
                norm="instance", upsample="resize_conv", padding="reflect",
                checkpoint_dir=str(tmp_path / "runs"), checkpoint_every=10, device="cpu",
                amp="none", save_dtype="float32", style_weight=2e-5, tv_weight=1e-2)
    return StyleConfig(**{**base, **kw})


def sr_config(tmp_path, photos, **kw) -> SuperResConfig:
    base = dict(data=str(photos), store=str(tmp_path / "store"), factor=4, loss="pixel",
                patch_size=32, batch_size=2, iterations=20, norm="none", residual=False,
                checkpoint_dir=str(tmp_path / "runs"), checkpoint_every=10, device="cpu",
                amp="none", save_dtype="float32", tv_weight=0.0, lr=2e-3)
    return SuperResConfig(**{**base, **kw})


def learned(history: list[float]) -> bool:
    return sum(history[-5:]) < sum(history[:5])


def test_style_run_learns_and_stores(tmp_path, photos, style_image):
    torch.manual_seed(0)
    net, result = style_training.run(style_config(tmp_path, photos, style_image))
    assert result.steps == 20 and len(result.history) == 20
    assert learned(result.history)
    loaded, manifest = ModelStore(tmp_path / "store").load("tiny_style")
    x = torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    assert manifest.iterations == 20 and manifest.task == "style"
    assert manifest.training["config"]["style_weight"] == 2e-5
    assert manifest.loss_network.startswith("vgg")
    assert set(manifest.final_losses) == {"content", "style", "tv", "total"}
    kept = Image.open(io.BytesIO(ModelStore(tmp_path / "store").painting("tiny_style")))
    with Image.open(style_image) as painting:       # kept with the model, at most 256 px
        scale = 256 / max(painting.size)
        assert kept.format == "JPEG"
        assert kept.size == (round(painting.width * scale), round(painting.height * scale))


@pytest.mark.parametrize("loss", ["pixel", "feat"])
def test_superres_run_learns_and_stores(tmp_path, photos, loss):
    net, result = superres_training.run(sr_config(tmp_path, photos, loss=loss))
    assert learned(result.history)
    loaded, manifest = ModelStore(tmp_path / "store").load(f"sr_x4_{loss}")
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (1, 3, 36, 44) and torch.equal(out, net.eval()(x))
    assert (manifest.factor, manifest.iterations) == (4, 20)


def test_lr_decay_lowers_the_rate_linearly_to_the_last_step(tmp_path, photos):
    superres_training.run(sr_config(tmp_path, photos, iterations=8, lr=4e-3, lr_decay=True))
    state = json.loads((tmp_path / "runs" / "sr_x4_pixel" / "state.json").read_text())
    assert state["param_groups"][0]["lr"] == pytest.approx(4e-3 * (1 - 7 / 8))   # step 8 of 8


def test_resume_continues_the_step_count(tmp_path, photos):
    superres_training.run(sr_config(tmp_path, photos, iterations=10))
    state = json.loads((tmp_path / "runs" / "sr_x4_pixel" / "state.json").read_text())
    assert state["step"] == 10
    _, result = superres_training.run(sr_config(tmp_path, photos, iterations=15, resume=True))
    assert result.steps == 15 and len(result.history) == 5
    manifest = ModelStore(tmp_path / "store").manifest("sr_x4_pixel")
    assert manifest.iterations == 15
    runs = manifest.training["runs"]   # both sessions, each with its steps and time
    assert [r["steps"] for r in runs] == [[0, 10], [10, 15]]
    assert all(r["command"].startswith("python -m train") for r in runs)
    assert manifest.training["seconds"] == round(sum(r["seconds"] for r in runs), 1)


@pytest.mark.parametrize("old_format", [False, True])
def test_fp16_resume_restores_the_loss_scale(tmp_path, photos, old_format):
    superres_training.run(sr_config(tmp_path, photos, iterations=2, amp="fp16"))
    path = tmp_path / "runs" / "sr_x4_pixel" / "state.json"
    state = json.loads(path.read_text())
    assert state["scaler"]["_growth_tracker"] == 2
    if old_format:  # as format 1 wrote it: no scaler state, so the resumed run starts afresh
        del state["scaler"]
        path.write_text(json.dumps({**state, "format_version": 1}))
    _, result = superres_training.run(sr_config(tmp_path, photos, iterations=4, amp="fp16",
                                                resume=True))
    assert result.steps == 4
    assert json.loads(path.read_text())["scaler"]["_growth_tracker"] == (2 if old_format else 4)


def test_resumed_run_equals_uninterrupted_run(tmp_path, photos):
    torch.manual_seed(0)
    straight, _ = superres_training.run(sr_config(tmp_path / "a", photos, iterations=6))
    torch.manual_seed(0)
    superres_training.run(sr_config(tmp_path / "b", photos, iterations=3))
    torch.manual_seed(0)
    resumed, _ = superres_training.run(sr_config(tmp_path / "b", photos, iterations=6,
                                                 resume=True))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_same_seed_same_weights(tmp_path, photos):
    a, _ = superres_training.run(sr_config(tmp_path / "a", photos, iterations=3, seed=5))
    b, _ = superres_training.run(sr_config(tmp_path / "b", photos, iterations=3, seed=5))
    c, _ = superres_training.run(sr_config(tmp_path / "c", photos, iterations=3, seed=6))
    w = [next(iter(n.state_dict().values())) for n in (a, b, c)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_init_from_counts_earlier_iterations(tmp_path, photos):
    superres_training.run(sr_config(tmp_path, photos, iterations=4))
    superres_training.run(sr_config(tmp_path, photos, iterations=3, init_from="sr_x4_pixel"))
    manifest = ModelStore(tmp_path / "store").manifest("sr_x4_pixel")
    assert manifest.iterations == 7
    assert manifest.training["init_from"]["iterations"] == 4


def test_cli_rejects_bad_factor(tmp_path, photos):
    proc = subprocess.run([sys.executable, "-m", "train", "superres", "--factor", "3",
                           "--data", str(photos), "--store", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "--factor must be 4 or 8, got 3" in proc.stderr


def test_distributed_data_parallel_with_two_gloo_processes(tmp_path, photos):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "train", "superres", "--loss", "pixel", "--factor", "4",
         "--patch-size", "32", "--batch-size", "2", "--iterations", "3", "--norm", "none",
         "--device", "cpu", "--amp", "none", "--data", str(photos),
         "--store", str(tmp_path / "store"), "--checkpoint-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = ModelStore(tmp_path / "store").manifest("sr_x4_pixel")
    assert manifest.iterations == 3
    assert proc.stdout.count("wrote ") == 1  # only rank 0 stores
