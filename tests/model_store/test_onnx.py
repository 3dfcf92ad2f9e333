"""ONNX export of stored networks: dynamic batch/height/width, checked against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_store import ModelStore
from model_store.__main__ import main
from nets.multistyle_net import MultiStyleNet
from nets.style_net import StyleNet
from nets.superres_net import SuperResNet

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial affine norm parameters, so a wrong graph cannot hide behind defaults."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "weight" in name and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif "bias" in name:
                p.uniform_(-0.1, 0.1)
    return net


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ModelStore:
    torch.manual_seed(0)
    store = ModelStore(tmp_path_factory.mktemp("store"))
    store.save(randomise(StyleNet(norm="instance")), name="tiny-style", task="style",
               architecture="style", options={"norm": "instance"})
    store.save(randomise(SuperResNet(4)), name="tiny-sr4", task="superres",
               architecture="superres", options={"factor": 4}, factor=4)
    return store


@pytest.mark.parametrize("name", ["tiny-style", "tiny-sr4"])
def test_export_runs_in_onnxruntime_on_any_size(store, tmp_path, name):
    torch.set_num_threads(1)
    out = tmp_path / f"{name}.onnx"
    assert main(["export-onnx", name, "--store", str(store.root), "--out", str(out),
                 "--no-verify"]) == 0
    net, manifest = store.load(name)
    scale = manifest.factor or 1
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    # 32x32 is a multiple of 4, 37x50 is not (StyleNet pads and crops it), batch 2 and 1.
    for shape in [(2, 3, 32, 32), (1, 3, 37, 50)]:
        x = torch.rand(shape, generator=g)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.inference_mode():
            expected = net(x).numpy()
        assert got.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
        assert np.abs(255 * got - 255 * expected).max() <= 1e-3


def test_export_cli_verifies_by_default(store, tmp_path, capsys):
    out = tmp_path / "style.onnx"
    assert main(["export-onnx", "tiny-style", "--store", str(store.root),
                 "--out", str(out)]) == 0
    assert "matches torch" in capsys.readouterr().out
    assert out.stat().st_size > 1_000_000  # 1.68M fp32 parameters stored inline


def test_multistyle_network_exports_with_a_mix_input(tmp_path, capsys):
    torch.manual_seed(3)
    options = {"styles": ["a", "b", "c"], "upsample": "resize_conv", "padding": "reflect"}
    net = MultiStyleNet(**options)
    with torch.no_grad():   # each style its own scale and shift
        for name, p in net.named_parameters():
            if name.endswith(("scale", "shift")):
                p.normal_(1.0 if name.endswith("scale") else 0.0, 0.5)
    ModelStore(tmp_path / "store").save(net, name="multistyle", task="style",
                                        architecture="multistyle", options=options)
    out = tmp_path / "multi.onnx"
    assert main(["export-onnx", "multistyle", "--store", str(tmp_path / "store"),
                 "--out", str(out)]) == 0
    assert "matches torch" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "mix"]
    net, _ = ModelStore(tmp_path / "store").load("multistyle")
    x = torch.rand(1, 3, 37, 50).expand(2, -1, -1, -1).contiguous()   # one image, two rows
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    got = session.run(None, {"image": x.numpy(), "mix": mix.numpy()})[0]
    with torch.inference_mode():
        expected = net(x, mix).numpy()
    assert np.abs(255 * got - 255 * expected).max() <= 1e-3
    assert np.abs(255 * got[0] - 255 * got[1]).mean() > 1    # the rows are different styles
