"""Resumable training state: weights and Adam moments in safetensors, the rest in JSON (the
step, the GradScaler of fp16 training, the config), with the runs that made it (command, steps,
seconds), so that a model trained in several `--resume` sessions records all of them.

Format 2 added the scaler; a format-1 checkpoint resumes with a fresh one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 2


def save(path: Path, net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
         step: int, config: dict[str, Any], runs: list[dict[str, Any]] | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, float]] = {}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = float(value)
    save_file(tensors, str(path / "state.safetensors.tmp"))
    meta = {"format_version": FORMAT_VERSION, "step": step, "config": config,
            "param_groups": opt_state["param_groups"], "scalars": scalars,
            "scaler": scaler.state_dict(),  # plain numbers; empty when fp16 is off
            "runs": runs or []}
    (path / "state.json.tmp").write_text(json.dumps(meta, indent=1))
    # Rename last, so that a crash mid-write leaves the previous checkpoint intact.
    (path / "state.safetensors.tmp").replace(path / "state.safetensors")
    (path / "state.json.tmp").replace(path / "state.json")


def load(path: Path, net: nn.Module, opt: torch.optim.Optimizer,
         scaler: torch.amp.GradScaler) -> int:
    """Restore weights, optimiser and loss scale in place; return the step to continue from."""
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint to resume in {path}")
    meta = json.loads((path / "state.json").read_text())
    if meta["format_version"] > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {meta['format_version']}; this code "
                         f"reads up to {FORMAT_VERSION}")
    tensors = load_file(str(path / "state.safetensors"))
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        for name, value in values.items():
            state.setdefault(int(idx), {})[name] = torch.tensor(value)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # None before format 2, empty from a run without fp16: the scaler then starts fresh.
    if meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return int(meta["step"])


def runs(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in the checkpoint at `path` (empty for one written before they were)."""
    return list(json.loads((path / "state.json").read_text()).get("runs", []))
