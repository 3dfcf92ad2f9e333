"""The store: round trip without pickle, digests, and clear errors for every broken entry."""

from __future__ import annotations

import json

import pytest
import torch

from model_store import (
    SHIPPED_ROOT,
    DigestMismatch,
    InvalidManifest,
    Manifest,
    ModelNotFound,
    ModelStore,
    StoreError,
)
from model_store.store import MANIFEST, WEIGHTS, sha256_file
from nets.style_net import StyleNet

OPTIONS = {"norm": "instance", "upsample": "resize_conv", "padding": "reflect"}


@pytest.fixture
def store(tmp_path) -> ModelStore:
    torch.manual_seed(0)
    store = ModelStore(tmp_path)
    store.save(StyleNet(**OPTIONS), name="tiny", task="style", architecture="style",
               options=OPTIONS, iterations=7, final_losses={"total": 1.5})
    return store


def test_round_trip_reproduces_outputs(tmp_path):
    torch.manual_seed(1)
    net = StyleNet(**OPTIONS).eval()
    store = ModelStore(tmp_path)
    manifest = store.save(net, name="rt", task="style", architecture="style", options=OPTIONS)
    loaded, read = store.load("rt")
    x = torch.rand(1, 3, 23, 31)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert read == manifest and read.sha256 == sha256_file(tmp_path / "rt" / WEIGHTS)
    assert not loaded.training


def test_fp16_storage_halves_size_and_stays_within_a_level(tmp_path):
    torch.manual_seed(2)
    net = StyleNet(**OPTIONS).eval()
    store = ModelStore(tmp_path)
    store.save(net, name="f32", task="style", architecture="style", options=OPTIONS)
    store.save(net, name="f16", task="style", architecture="style", options=OPTIONS,
               dtype=torch.float16)
    size = {n: (tmp_path / n / WEIGHTS).stat().st_size for n in ("f32", "f16")}
    assert size["f16"] < 0.55 * size["f32"]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert (store.load("f16")[0](x) - net(x)).abs().max() * 255 < 1


def test_names_and_manifests(store):
    assert store.names() == ["tiny"]
    m = store.manifest("tiny")
    assert (m.task, m.iterations, m.final_losses, m.factor) == ("style", 7, {"total": 1.5}, None)
    assert store.validate("tiny") == m


def test_unknown_model_lists_what_exists(store):
    with pytest.raises(ModelNotFound, match="no model 'nope'.*available: tiny"):
        store.load("nope")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "UPPER", ".hidden"])
def test_names_cannot_escape_the_store(store, name):
    with pytest.raises(StoreError, match="invalid model name"):
        store.load(name)


def test_digest_mismatch(store):
    path = store.root / "tiny" / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match="tiny.*sha256"):
        store.load("tiny")


def test_missing_weights(store):
    (store.root / "tiny" / WEIGHTS).unlink()
    with pytest.raises(ModelNotFound, match="no model.safetensors"):
        store.load("tiny")


def edit_manifest(store, **changes):
    path = store.root / "tiny" / MANIFEST
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("changes", "message"), [
    ({"architecture": "gan"}, "unknown architecture 'gan'"),
    ({"options": {"norm": "instance"}}, "weights do not fit"),
    ({"task": "denoise"}, "task must be style or superres"),
    ({"task": "superres"}, "superres needs factor"),
    ({"format_version": 99}, "format_version 99"),
    ({"colour": "blue"}, "unknown manifest fields: colour"),
    ({"name": "other"}, "holds a manifest named 'other'"),
])
def test_invalid_manifests(store, changes, message):
    edit_manifest(store, **changes)
    with pytest.raises(InvalidManifest, match=message):
        store.load("tiny")


def test_manifest_that_is_not_json(store):
    (store.root / "tiny" / MANIFEST).write_text("{nope")
    with pytest.raises(InvalidManifest, match="not valid JSON"):
        store.manifest("tiny")


def test_update_metrics_merges(store):
    store.update_metrics("tiny", {"Set5_x4": {"psnr": 30.0}})
    store.update_metrics("tiny", {"speed": 1})
    assert store.manifest("tiny").metrics == {"Set5_x4": {"psnr": 30.0}, "speed": 1}
    store.validate("tiny")  # the weights' digest is untouched


def test_manifest_round_trips_through_json():
    m = Manifest(name="x", task="superres", architecture="superres", options={"factor": 4},
                 sha256="0" * 64, factor=4, metrics={"a": 1})
    assert Manifest.from_dict(json.loads(m.to_json())) == m


def test_every_shipped_model_validates():
    store = ModelStore(SHIPPED_ROOT)
    assert "udnie" in store.names()
    for name in store.names():
        store.validate(name)
