"""PSNR/SSIM against hand computations, and the bicubic baseline of the paper's Fig. 8."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from model_store import ModelStore, data_root
from nets.superres_net import SuperResNet
from train.__main__ import main
from train.degrade import degrade
from train.evaluate import hr_and_lr, metric_key
from train.metrics import gradient_energy, psnr, rgb_to_y, ssim, y_psnr_ssim, y_sharpness

DATA = data_root()


def test_psnr_by_hand():
    a = np.zeros((2, 2))
    b = np.array([[0.0, 0.0], [0.0, 10.0]])  # MSE = 100 / 4 = 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    assert psnr(a, a) == math.inf


def test_bt601_luma_range():
    black, white = np.zeros((1, 1, 3)), np.full((1, 1, 3), 255.0)
    assert rgb_to_y(black)[0, 0] == pytest.approx(16)
    assert rgb_to_y(white)[0, 0] == pytest.approx(235)
    green = np.array([[[0.0, 255.0, 0.0]]])
    assert rgb_to_y(green)[0, 0] == pytest.approx(16 + 128.553)


def test_ssim_of_identical_images_is_one():
    a = np.random.default_rng(0).uniform(0, 255, (20, 24))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_constant_images_is_the_luminance_term():
    # No variance: the structure term is C2 / C2 = 1, leaving (2 mu_a mu_b + C1) / (...).
    c1 = (0.01 * 255) ** 2
    a, b = np.full((12, 12), 100.0), np.full((12, 12), 120.0)
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def loop_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 written out window by window, as independent of ssim() as possible."""
    r = 5
    weights = [[math.exp(-(i * i + j * j) / (2 * 1.5**2)) for j in range(-r, r + 1)]
               for i in range(-r, r + 1)]
    total_w = sum(map(sum, weights))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for y in range(r, a.shape[0] - r):
        for x in range(r, a.shape[1] - r):
            pairs = [(weights[i][j] / total_w, a[y + i - r, x + j - r], b[y + i - r, x + j - r])
                     for i in range(2 * r + 1) for j in range(2 * r + 1)]
            mu_a = sum(w * p for w, p, _ in pairs)
            mu_b = sum(w * q for w, _, q in pairs)
            var_a = sum(w * (p - mu_a) ** 2 for w, p, _ in pairs)
            var_b = sum(w * (q - mu_b) ** 2 for w, _, q in pairs)
            cov = sum(w * (p - mu_a) * (q - mu_b) for w, p, q in pairs)
            values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                          / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return sum(values) / len(values)


def test_ssim_matches_a_direct_loop_on_16x16():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 255, (16, 16))
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    expected = loop_ssim(a, b)
    assert 0.3 < expected < 0.99  # a non-trivial case
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)


def test_border_is_ignored():
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    out = ref.copy()
    out[:4] = 0
    out[:, -4:] = 255
    assert y_psnr_ssim(out, ref, border=4) == (math.inf, pytest.approx(1.0))
    assert y_psnr_ssim(out, ref, border=3)[0] < 20


def test_hr_is_cropped_to_a_multiple_of_the_factor(tmp_path):
    Image.new("RGB", (13, 10), (200, 100, 50)).save(tmp_path / "a.png")
    hr, lr = hr_and_lr(tmp_path / "a.png", 4)
    assert hr.size == (12, 8) and lr.size == (3, 2)
    assert lr.getpixel((1, 1)) == (200, 100, 50)  # a flat image stays flat


def test_gradient_energy_by_hand():
    y = np.array([[0.0, 3.0, 3.0], [4.0, 3.0, 3.0], [4.0, 4.0, 4.0]])
    # forward differences at (0,0): dx 3, dy 4 -> 5; (0,1): dx 0, dy 0; (1,0): dx -1, dy 0;
    # (1,1): dx 0, dy 1
    assert gradient_energy(y) == pytest.approx((5 + 0 + 1 + 1) / 4)


def test_sharpness_of_a_blurred_image_is_below_one():
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert y_sharpness(ref, ref, border=2) == pytest.approx(1.0)
    soft = np.asarray(Image.fromarray(ref).resize((6, 6), Image.Resampling.BICUBIC)
                      .resize((24, 24), Image.Resampling.BICUBIC))
    assert y_sharpness(soft, ref, border=2) < 0.5


def test_paper_degradation_feeds_the_paper_inputs_rounded_to_8_bits(tmp_path):
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (10, 9, 3), dtype=np.uint8)).resize(
        (34, 29), Image.Resampling.BICUBIC).save(tmp_path / "a.png")
    hr, lr = hr_and_lr(tmp_path / "a.png", 4, "paper")
    assert hr.size == (32, 28) and lr.size == (8, 7)
    x = torch.from_numpy(np.asarray(hr).copy()).permute(2, 0, 1)[None].float() / 255
    want = (degrade(x, 4, kind="paper")[0] * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(lr), want)
    assert metric_key("Set5", 4, "paper") == "Set5_x4_paper"
    assert metric_key("Set5", 4) == "Set5_x4"


@pytest.mark.skipif(not (DATA / "sr" / "Set5").is_dir(), reason="Set5 not available")
def test_bicubic_x4_on_set5_matches_table_1(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "set5.json"
    assert main(["eval", "--hr-dir", str(DATA / "sr" / "Set5"), "--factor", "4",
                 "--models", "bicubic", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["bicubic"]
    bicubic = results["bicubic"]
    assert sorted(bicubic["images"]) == ["baby", "bird", "butterfly", "head", "woman"]
    assert bicubic["psnr"] == pytest.approx(28.43, abs=0.2)    # the paper: 28.43 dB
    assert bicubic["ssim"] == pytest.approx(0.8114, abs=0.005)  # the paper: 0.8114
    assert bicubic["psnr"] == pytest.approx(np.mean([v["psnr"] for v in
                                                     bicubic["images"].values()]))
    assert "bicubic" in capsys.readouterr().out


def test_models_are_evaluated_and_manifests_updated(tmp_path):
    torch.manual_seed(0)
    hr_dir = tmp_path / "Tiny"
    hr_dir.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        smooth = rng.uniform(0, 255, (5, 6, 3)).astype(np.uint8)
        Image.fromarray(smooth).resize((50, 41), Image.Resampling.BICUBIC).save(
            hr_dir / f"im{i}.png")
    store = ModelStore(tmp_path / "store")
    store.save(SuperResNet(4, norm="none", residual=True), name="sr4", task="superres",
               architecture="superres", options={"factor": 4, "norm": "none",
                                                 "residual": True}, factor=4)
    store.save(SuperResNet(8, norm="none"), name="sr8", task="superres",
               architecture="superres", options={"factor": 8, "norm": "none"}, factor=8)
    out = tmp_path / "r.json"
    assert main(["eval", "--hr-dir", str(hr_dir), "--factor", "4", "--store", str(store.root),
                 "--json", str(out), "--update-manifests"]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"bicubic", "sr4"}  # sr8 has another factor
    assert sorted(results["sr4"]["images"]) == ["im0", "im1"]
    # A residual net starts as bicubic upsampling (torch's, not PIL's): as good as the
    # baseline on these smooth images (a random non-residual net outputs near-uniform grey).
    assert results["bicubic"]["psnr"] > 35 and results["sr4"]["psnr"] > 35
    metrics = store.manifest("sr4").metrics
    assert metrics == {"Tiny_x4": {k: results["sr4"][k] for k in ("psnr", "ssim", "sharpness")}}
    assert store.manifest("sr8").metrics == {}
    assert main(["eval", "--hr-dir", str(hr_dir), "--factor", "4", "--store", str(store.root),
                 "--json", str(out), "--update-manifests", "--degradation", "paper"]) == 0
    paper = json.loads(out.read_text())
    assert paper["sr4"]["psnr"] != results["sr4"]["psnr"]     # other inputs, other scores
    assert store.manifest("sr4").metrics["Tiny_x4_paper"]["psnr"] == paper["sr4"]["psnr"]
    assert store.manifest("sr4").metrics["Tiny_x4"] == metrics["Tiny_x4"]
