"""Stored policies: kept across starts, reused only when nothing they depend on changed."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch

from nets.style_net import StyleNet
from service import policy as policies
from service import policy_store
from service.policy import ModelPolicy, SizeChoice
from service.policy_store import PolicyStore, environment
from service.registry import Registry
from tests.helpers.models import make_store


def a_policy() -> ModelPolicy:
    size = SizeChoice(256, "openvino", 2, {1: 10.123456, 2: 9.5}, {"base": 20.25},
                      {"openvino": {1: 10.123456, 2: 9.5}, "base": {1: 20.25}})
    return ModelPolicy("measured", [size], SizeChoice(0, "base", 8), {"openvino": 0.25},
                       ["onnx"], {1: 4.5, 2: 6.25}, 3.0)


def test_a_policy_survives_json_exactly():
    p = a_policy()
    assert ModelPolicy.from_dict(json.loads(json.dumps(p.as_dict(rounded=False)))) == p
    assert p.as_dict()["sizes"][0]["per_image_ms"] == {"1": 10.123, "2": 9.5}   # shown rounded


def test_the_store_gives_back_only_what_was_stored_under_the_same_key(tmp_path):
    path = tmp_path / "state" / "policy.json"
    store = PolicyStore(path)
    store.put("udnie", "k1", a_policy())
    store.save()
    again = PolicyStore(path)
    assert again.get("udnie", "k1") == a_policy()
    assert again.get("udnie", "k2") is None and again.get("candy", "k1") is None
    assert PolicyStore(None).get("udnie", "k1") is None
    PolicyStore(None).save()   # no file: nothing to do


def test_each_model_keeps_its_latest_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(policy_store, "KEYS_PER_MODEL", 2)
    store = PolicyStore(tmp_path / "policy.json")
    for key in ("node-a", "node-b", "node-a", "node-c"):   # node-a stored again: the latest
        store.put("udnie", key, a_policy())
    store.save()
    again = PolicyStore(tmp_path / "policy.json")
    assert [k for k in ("node-a", "node-b", "node-c") if again.get("udnie", k)] == [
        "node-a", "node-c"]


def test_keys_differ_with_whatever_the_measurement_depends_on():
    env = environment(torch.device("cpu"), 2)
    base = PolicyStore.key(env, "digest", {"sizes": [256]})
    assert base == PolicyStore.key(dict(env), "digest", {"sizes": [256]})
    assert base != PolicyStore.key({**env, "threads": 4}, "digest", {"sizes": [256]})
    assert base != PolicyStore.key({**env, "device": "NVIDIA H200"}, "digest", {"sizes": [256]})
    versions = {**env["versions"], "torch": "0.0"}
    assert base != PolicyStore.key({**env, "versions": versions}, "digest", {"sizes": [256]})
    assert base != PolicyStore.key(env, "other", {"sizes": [256]})
    assert base != PolicyStore.key(env, "digest", {"sizes": [512]})


def test_a_damaged_or_unwritable_file_means_measuring(tmp_path, caplog):
    bad = tmp_path / "policy.json"
    bad.write_text("{not json")
    with caplog.at_level(logging.WARNING, "service.policy_store"):
        assert PolicyStore(bad).get("udnie", "k") is None
    assert "ignoring the stored policies" in caplog.text
    bad.write_text(json.dumps({"format": 2, "models": {"udnie": {"k": {"sizes": []}}}}))
    assert PolicyStore(bad).get("udnie", "k") is None           # an entry missing its fields
    blocked = tmp_path / "file"
    blocked.write_text("")
    store = PolicyStore(blocked / "policy.json")                 # its folder is a file
    store.put("udnie", "k", a_policy())
    with caplog.at_level(logging.WARNING, "service.policy_store"):
        store.save()
    assert "could not store the policies" in caplog.text


def registry(root, policy_file, **kw) -> Registry:
    return Registry(root, ["udnie", "candy"], "cpu", "float32", policy="measure",
                    policy_sizes=[32], policy_budget_s=1, max_batch_size=2,
                    policy_store=PolicyStore(policy_file), **kw)


def outputs(reg: Registry) -> list[np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    return [m.run([image])[0] for m in reg.models()]


def test_a_second_start_reuses_the_policies_and_a_changed_model_is_measured_again(
        tmp_path, monkeypatch):
    root, policy_file = tmp_path / "store", tmp_path / "policy.json"
    store = make_store(root, factors=())
    first = registry(root, policy_file)
    first.load_all()
    sources = {m.name: m.policy.source for m in first.models()}
    assert sources == {"udnie": "measured", "candy": "shared with udnie"}
    assert set(json.loads(policy_file.read_text())["models"]) == {"udnie", "candy"}

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the stored policy matches")

    exports = sorted((tmp_path / "exports").glob("*.onnx"))
    assert len(exports) == (2 if "openvino_rewrite" in first.models()[0].runners
                            or "onnx_rewrite" in first.models()[0].runners else 0)
    monkeypatch.setattr(policies, "measure", no_measuring)
    if exports:    # the exports are read back, not made again
        monkeypatch.setattr(policy_store, "onnx_bytes", no_measuring)
    second = registry(root, policy_file)
    second.load_all()
    assert {m.name: m.policy.source for m in second.models()} == {
        "udnie": "stored (measured)", "candy": "stored (shared with udnie)"}
    for a, b in zip(first.models(), second.models(), strict=True):
        assert a.policy.sizes == b.policy.sizes and a.policy.errors == b.policy.errors
    assert all(np.array_equal(a, b) for a, b in zip(outputs(first), outputs(second),
                                                    strict=True))
    with pytest.raises(AssertionError, match="measured although"):
        registry(root, policy_file, remeasure=True).load_all()

    monkeypatch.undo()
    torch.manual_seed(7)   # udnie retrained: new weights, new digest
    store.save(StyleNet(norm="instance"), name="udnie", task="style", architecture="style",
               options={"norm": "instance"})
    third = registry(root, policy_file)
    third.load_all()
    assert {m.name: m.policy.source for m in third.models()} == {
        "udnie": "measured", "candy": "stored (shared with udnie)"}


def test_exports_are_kept_by_key_and_bounded(tmp_path, monkeypatch):
    made: list[int] = []

    def export(module) -> bytes:
        made.append(1)
        return b"onnx %d" % len(made)

    monkeypatch.setattr(policy_store, "onnx_bytes", export)
    monkeypatch.setattr(policy_store, "KEPT_EXPORTS", 2)
    store = PolicyStore(tmp_path / "policy.json")
    assert store.export(None, key="a") == b"onnx 1"
    assert store.export(None, key="a") == b"onnx 1" and len(made) == 1   # read back
    for key in ("b", "c"):
        time.sleep(0.02)      # distinct modification times: the oldest goes
        store.export(None, key=key)
    assert sorted(p.stem for p in (tmp_path / "exports").glob("*.onnx")) == ["b", "c"]
    assert PolicyStore(None).export(None, key="a") == b"onnx 4"          # nothing kept
    assert PolicyStore.export_key("d1") != PolicyStore.export_key("d2")
