"""Resumable state: weights, Adam moments and the fp16 loss scale survive a save and load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from train import checkpoint


def trained(scaler: torch.amp.GradScaler) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A tiny net after one overflowing step (the scale backs off) and two finite ones (the
    growth tracker counts them)."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for factor in (float("inf"), 1.0, 1.0):
        opt.zero_grad()
        scaler.scale(net(torch.ones(1, 3)).sum() * factor).backward()
        scaler.step(opt)
        scaler.update()
    return net, opt


def fresh() -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    net = nn.Linear(3, 2)
    return net, torch.optim.Adam(net.parameters(), lr=1e-2), new_scaler()


def new_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=5)


def test_scaler_state_round_trips(tmp_path):
    scaler = new_scaler()
    net, opt = trained(scaler)
    assert (scaler.get_scale(), scaler._get_growth_tracker()) == (512.0, 2)
    checkpoint.save(tmp_path, net, opt, scaler, step=3, config={"amp": "fp16"})

    net2, opt2, scaler2 = fresh()
    assert checkpoint.load(tmp_path, net2, opt2, scaler2) == 3
    assert scaler2.state_dict() == scaler.state_dict()
    assert (scaler2.get_scale(), scaler2._get_growth_tracker()) == (512.0, 2)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"],
                       opt2.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_holds_no_pickle(tmp_path):
    scaler = new_scaler()
    net, opt = trained(scaler)
    checkpoint.save(tmp_path, net, opt, scaler, step=3, config={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    meta = json.loads((tmp_path / "state.json").read_text())
    assert meta["format_version"] == checkpoint.FORMAT_VERSION == 2
    assert meta["scaler"]["scale"] == 512.0 and meta["scaler"]["_growth_tracker"] == 2


def test_format_1_checkpoint_resumes_with_a_fresh_scaler(tmp_path):
    scaler = new_scaler()
    net, opt = trained(scaler)
    checkpoint.save(tmp_path, net, opt, scaler, step=3, config={})
    meta = json.loads((tmp_path / "state.json").read_text())
    del meta["scaler"]  # as format 1 wrote it
    (tmp_path / "state.json").write_text(json.dumps({**meta, "format_version": 1}))

    net2, opt2, scaler2 = fresh()
    assert checkpoint.load(tmp_path, net2, opt2, scaler2) == 3
    assert (scaler2.get_scale(), scaler2._get_growth_tracker()) == (1024.0, 0)
    assert torch.equal(net2.weight, net.weight)


def test_checkpoint_without_fp16_resumes_fp16_with_a_fresh_scaler(tmp_path):
    net, opt, _ = fresh()
    checkpoint.save(tmp_path, net, opt, torch.amp.GradScaler("cpu", enabled=False), 3, {})
    assert json.loads((tmp_path / "state.json").read_text())["scaler"] == {}
    net2, opt2, scaler2 = fresh()
    assert checkpoint.load(tmp_path, net2, opt2, scaler2) == 3
    assert scaler2.get_scale() == 1024.0


def test_newer_format_is_refused(tmp_path):
    scaler = new_scaler()
    net, opt = trained(scaler)
    checkpoint.save(tmp_path, net, opt, scaler, step=3, config={})
    meta = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format 99"):
        checkpoint.load(tmp_path, *fresh())
