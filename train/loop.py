"""The training run shared by every task: `train` sets up the device and processes, has the task
build its `Parts`, and stores the result; `fit` is the optimisation loop inside it (Adam, autocast,
checkpoints, progress)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model_store import Manifest, ModelStore
from nets.device import native_bf16, resolve_device
from train import checkpoint, distributed
from train.config import Amp, TrainConfig
from train.distributed import World

Objective = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]
Sampler = Callable[[torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Parts:
    """What differs between the tasks: the network, its objective, its data and the manifest
    fields that describe them."""
    name: str                 # model name in the store and folder of the checkpoints
    net: nn.Module
    objective: Objective
    sample: Sampler
    data_images: int          # photos the sampler draws from
    task: str                 # "style" or "superres"
    architecture: str         # the model store's builder of `net`
    options: dict             # its arguments
    loss_network: str
    factor: int | None = None
    painting: str = ""        # a style's painting, kept with the model (model_store.PAINTING)
    painting_style: str | None = None   # ... as this style of a multi-style network
    init_from: dict | None = None       # the start `build` made itself (a style added)
    run_name: str = ""                  # folder of the checkpoints (default: name)


@dataclass
class Result:
    steps: int
    losses: dict[str, float]   # mean of each weighted term over the last steps
    seconds: float
    history: list[float]       # total loss of every step of this run
    runs: list[dict]           # every run that trained these weights, this one last


def train(cfg: TrainConfig, build: Callable[[torch.device], Parts]) -> tuple[nn.Module, Result]:
    """Train what `build(device)` makes, store it (on the main process) and return the network
    with its training result. The seed is set just before `build`, so it fixes the initial
    weights."""
    device = resolve_device(cfg.device)
    world = distributed.setup(device)
    try:
        torch.manual_seed(cfg.seed)
        parts = build(device)
        init_from = parts.init_from or init_weights(cfg, parts.net)
        result = fit(cfg, parts.net, parts.objective, parts.sample, device, world,
                     parts.run_name or parts.name)
        if world.main:
            manifest = store_result(cfg, parts, result, device, init_from)
            print(f"wrote {cfg.store}/{parts.name} after {result.steps} steps: "
                  f"{manifest.final_losses}")
    finally:
        distributed.teardown()
    return parts.net, result


def autocast_dtype(amp: Amp, device: torch.device) -> torch.dtype | None:
    """`auto`: bf16 where the hardware runs it (fp16 on CUDA without bf16), else none."""
    if amp == "none":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "auto" and device.type == "cpu":
        return torch.bfloat16 if native_bf16() else None
    if amp in ("bf16", "auto"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16 if amp == "auto" else torch.bfloat16
        return torch.bfloat16
    raise ValueError(f"unknown amp {amp!r}; expected auto, bf16, fp16 or none")


def fit(cfg: TrainConfig, net: nn.Module, objective: Objective, sample: Sampler,
        device: torch.device, world: World, name: str) -> Result:
    """Minimise the sum of the objective's (weighted) terms with Adam, as eq. 1."""
    net.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    amp = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ckpt_dir = Path(cfg.checkpoint_dir) / name
    step = checkpoint.load(ckpt_dir, net, opt, scaler) if cfg.resume else 0
    earlier = checkpoint.runs(ckpt_dir) if cfg.resume else []
    first_step = step
    model = DistributedDataParallel(net) if world.size > 1 else net
    gen = torch.Generator()
    window: dict[str, list[float]] = {}
    history: list[float] = []
    start = time.monotonic()

    def runs() -> list[dict]:
        return [*earlier, {"command": command_line(), "steps": [first_step, step],
                           "seconds": round(time.monotonic() - start, 1)}]

    bar = tqdm(total=cfg.iterations, initial=step, disable=not world.main, dynamic_ncols=True,
               desc=name, mininterval=2.0)
    model.train()
    while step < cfg.iterations:
        # Seeded by rank and step, so that a resumed run samples what an uninterrupted one would.
        if cfg.lr_decay:
            spent = (time.monotonic() - start) / cfg.time_limit_s if cfg.time_limit_s else 0.0
            for group in opt.param_groups:
                group["lr"] = cfg.lr * max(0.0, 1 - max(step / cfg.iterations, spent))
        gen.manual_seed(cfg.seed * 1_000_003 + world.rank * 7919 + step)
        batch = sample(gen).to(device, non_blocking=True)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            terms = objective(model, batch)
        total = functools.reduce(operator.add, terms.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        for key, value in {**terms, "total": total}.items():
            window.setdefault(key, []).append(float(value.detach()))
            del window[key][:-100]
        history.append(window["total"][-1])
        if not math.isfinite(history[-1]):
            raise FloatingPointError(f"loss became {history[-1]} at step {step}")
        bar.update(1)
        out_of_time = bool(cfg.time_limit_s) and time.monotonic() - start > cfg.time_limit_s
        if step % 25 == 0 or step == cfg.iterations or out_of_time:   # the last step too
            means = {k: sum(v) / len(v) for k, v in window.items()}
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
            if cfg.progress_json and world.main:
                print(json.dumps({"step": step, "iterations": cfg.iterations, "losses": means,
                                  "seconds": round(time.monotonic() - start, 1),
                                  "time_limit_s": cfg.time_limit_s}), flush=True)
        if world.main and step % cfg.checkpoint_every == 0:
            checkpoint.save(ckpt_dir, net, opt, scaler, step, dataclasses.asdict(cfg), runs())
        if out_of_time:
            break
    bar.close()
    if world.main and step % cfg.checkpoint_every:
        checkpoint.save(ckpt_dir, net, opt, scaler, step, dataclasses.asdict(cfg), runs())
    losses = {k: sum(v) / len(v) for k, v in window.items()}
    return Result(step, losses, time.monotonic() - start, history, runs())


def command_line() -> str:
    return "python -m train " + " ".join(sys.argv[1:])


def init_weights(cfg: TrainConfig, net: nn.Module) -> dict | None:
    """Load the weights of `cfg.init_from`; return what the manifest records of that start."""
    if not cfg.init_from:
        return None
    start, manifest = ModelStore(cfg.store).load(cfg.init_from)
    net.load_state_dict(start.state_dict())
    return {"name": manifest.name, "sha256": manifest.sha256, "iterations": manifest.iterations,
            "training": manifest.training}


def store_result(cfg: TrainConfig, parts: Parts, result: Result, device: torch.device,
                 init_from: dict | None) -> Manifest:
    """Write the trained network and everything needed to train it again into the store."""
    training = {
        "command": command_line(),
        "init_from": init_from,
        "config": dataclasses.asdict(cfg),
        "data_images": parts.data_images,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "seconds": round(sum(r["seconds"] for r in result.runs), 1),
        "runs": result.runs,   # more than one when resumed
        "torch": torch.__version__,
    }
    dtype = {"float16": torch.float16, "float32": torch.float32}[cfg.save_dtype]
    store = ModelStore(cfg.store)
    manifest = store.save(
        parts.net.float().eval(), name=parts.name, task=parts.task,
        architecture=parts.architecture, options=parts.options, dtype=dtype, factor=parts.factor,
        loss_network=parts.loss_network, training=training,
        iterations=result.steps + (init_from or {}).get("iterations", 0),
        final_losses={k: round(v, 6) for k, v in result.losses.items()})
    if parts.painting:
        with Image.open(parts.painting) as painting:
            store.save_painting(parts.name, painting, parts.painting_style)
    return manifest
