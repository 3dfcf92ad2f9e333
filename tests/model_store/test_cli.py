"""`python -m model_store list|validate|painting` on a temporary store."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_store import ModelStore
from model_store.__main__ import main
from model_store.store import WEIGHTS, sha256_file
from nets.superres_net import SuperResNet

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> ModelStore:
    torch.manual_seed(0)
    store = ModelStore(tmp_path)
    for name in ("sr-a", "sr-b"):
        store.save(SuperResNet(4, norm="none"), name=name, task="superres",
                   architecture="superres", options={"factor": 4, "norm": "none"}, factor=4,
                   iterations=1234)
    return store


def test_list_shows_every_model(store, capsys):
    assert main(["list", "--store", str(store.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    digest = sha256_file(store.root / "sr-a" / WEIGHTS)[:12]
    row = next(line for line in lines if line.startswith("sr-a"))
    assert row.split() == ["sr-a", "superres", "x4", "1,234", digest, *row.split()[-2:]]
    # 400,451 fp32 parameters (+ a small header): 1.6 MB = 1.5 MiB
    assert row.split()[-2:] == ["1.5", "MiB"]
    assert any(line.startswith("sr-b") for line in lines)


def test_validate_passes_on_intact_store(store, capsys):
    assert main(["validate", "--store", str(store.root)]) == 0
    assert "2 model(s)" in capsys.readouterr().out


def test_validate_fails_on_tampered_weights(store, capsys):
    weights = store.root / "sr-b" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip one byte of the last tensor
    weights.write_bytes(bytes(data))
    assert main(["validate", "--store", str(store.root)]) == 1
    err = capsys.readouterr().err
    assert "FAILED sr-b" in err and "sha256" in err
    assert "sr-a" not in err
    assert main(["validate", "sr-a", "--store", str(store.root)]) == 0


def test_validate_fails_on_missing_weights_in_a_subprocess(store):
    (store.root / "sr-a" / WEIGHTS).unlink()
    result = subprocess.run([sys.executable, "-m", "model_store", "validate", "--store",
                             str(store.root)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "FAILED sr-a" in result.stderr and WEIGHTS in result.stderr
    assert "1 of 2 model(s)" in result.stderr


def test_validate_unknown_name(store, capsys):
    assert main(["validate", "nope", "--store", str(store.root)]) == 1
    assert "no model 'nope'" in capsys.readouterr().err


def test_painting_is_kept_small_with_a_style_model(tmp_path, capsys):
    from PIL import Image

    from nets.style_net import StyleNet

    store = ModelStore(tmp_path / "store")
    store.save(StyleNet(norm="instance"), name="wave", task="style", architecture="style",
               options={"norm": "instance"})
    store.save(SuperResNet(4, norm="none"), name="sr", task="superres", architecture="superres",
               options={"factor": 4, "norm": "none"}, factor=4)
    painting = tmp_path / "wave.png"
    Image.new("RGB", (1000, 600), (10, 120, 200)).save(painting)
    assert store.painting("wave") is None
    assert main(["painting", "--store", str(store.root), "wave", str(painting)]) == 0
    assert "wave/painting.jpg" in capsys.readouterr().out
    kept = Image.open(io.BytesIO(store.painting("wave")))
    assert kept.format == "JPEG" and kept.size == (256, 154)      # 600 * 256 / 1000 = 153.6
    assert max(abs(a - b) for a, b in zip(kept.getpixel((100, 70)), (10, 120, 200),
                                          strict=True)) <= 2
    assert main(["painting", "--store", str(store.root), "sr", str(painting)]) == 1
    assert "not a style model" in capsys.readouterr().err
    assert main(["painting", "--store", str(store.root), "wave", str(tmp_path / "no.png")]) == 1


def test_a_multistyle_network_keeps_a_painting_per_style(tmp_path, capsys):
    from PIL import Image

    from nets.multistyle_net import MultiStyleNet

    store = ModelStore(tmp_path / "store")
    store.save(MultiStyleNet(["a", "b"]), name="multi", task="style",
               architecture="multistyle", options={"styles": ["a", "b"]})
    painting = tmp_path / "b.png"
    Image.new("RGB", (300, 300), (200, 10, 10)).save(painting)
    assert main(["painting", "--store", str(store.root), "multi", str(painting)]) == 1
    assert main(["painting", "--store", str(store.root), "multi", str(painting),
                 "--style", "c"]) == 1
    capsys.readouterr()
    assert main(["painting", "--store", str(store.root), "multi", str(painting),
                 "--style", "b"]) == 0
    assert "multi/paintings/b.jpg" in capsys.readouterr().out
    assert Image.open(io.BytesIO(store.painting("multi", "b"))).size == (256, 256)
    assert store.painting("multi", "a") is None and store.painting("multi") is None
