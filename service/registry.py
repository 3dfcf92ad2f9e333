"""The loaded models: every model of the store, on the device, warmed up, ready to run.

Knows nothing of HTTP, caching or metrics: it turns uint8 pixel arrays into uint8 pixel arrays.
With `policy="measure"` it also decides how each model runs on this device (`service.policy`):
the execution path and the largest batch per common input size, and on a CPU how many forward
passes run at once ("lanes"), which the batcher follows.

A multi-style network (architecture "multistyle": conditional instance norm, one set of
convolutions for many styles) takes a second input per image, its condition: the row of style
weights (`LoadedModel.styles` order, summing to 1). Images with different rows run in one
forward pass. Every execution path of `service.execution` takes that second input (the ONNX
export has it as an input of its own), and the policy times them with equal weights: the
weights do not change the cost.

On CUDA a batch runs between a pinned upload and a pinned download on its worker thread's own
streams (`service.staging`), so that with two lanes one batch's copies overlap another's
compute.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_store import Manifest, ModelStore
from nets.device import resolve_device
from service import execution, policy_store, quality
from service import policy as policies
from service.activations import INDEX_LIMIT, ActivationSizes, batch_limit
from service.policy import ModelPolicy
from service.policy_store import PolicyStore
from service.staging import Staging

log = logging.getLogger("service.registry")

MIN_SIDE_PX = 16  # smaller inputs are edge-padded: reflect padding needs a few pixels per side
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def architecture(manifest: Manifest) -> str:
    """Models of one architecture and options cost the same: the first one is measured. A
    multi-style network's style names are not part of it: one more style (a row of scale and
    shift per layer) costs nothing that can be measured."""
    options = {k: v for k, v in manifest.options.items() if k != "styles"}
    return json.dumps([manifest.architecture, options], sort_keys=True)


def check(model: LoadedModel, paintings: dict[str, bytes] | None = None) -> quality.Verdict:
    """Whether a freshly loaded model may take traffic: its output on a test image
    must be finite, and in reduced precision within the error its manifest records against the
    same weights in float32 (plus a grey level: the test image is not the images it was
    recorded on); then it must pass its task's quality gate (service/quality.py), a style
    network against the `paintings` the store keeps of its styles."""
    x = policies.test_image(4 * MIN_SIDE_PX).to(model.device)
    mix = (torch.full((1, len(model.styles)), 1 / len(model.styles), device=model.device)
           if model.styles else None)
    y = model.run_module(x.to(model.dtype), mix).float()
    if not torch.isfinite(y).all():
        return quality.Verdict("its output on a test image is not finite")
    recorded = model.manifest.metrics.get("fp16_max_error_levels")
    if model.dtype != torch.float32 and recorded is not None:
        reference = copy.deepcopy(model.module).float()
        with torch.inference_mode():
            exact = (reference(x.float(), mix) if mix is not None else reference(x.float()))
        error = float((policies.levels(y) - policies.levels(exact)).abs().max())
        if error > recorded + 1:
            return quality.Verdict(f"in {model.dtype_name} it differs from float32 by "
                                   f"{error:.1f} grey levels, over the {recorded:.2f} its "
                                   "manifest records")
    return quality.check(model, paintings or {})


def unchanged_styles(new: LoadedModel, old: LoadedModel) -> set[str]:
    """The styles of a multi-style network that compute as they did in `old`: every shared
    weight equal, and their own rows of scale and shift equal."""
    if not new.styles or not old.styles:
        return set()
    a, b = new.module.state_dict(), old.module.state_dict()
    rows = {k for k in a if k.endswith((".scale", ".shift"))}
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a.keys() - rows):
        return set()
    return {s for s in new.styles if s in old.styles and all(
        torch.equal(a[k][new.styles.index(s)], b[k][old.styles.index(s)]) for k in rows)}


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """auto: float16 on CUDA (the networks tolerate it well), float32 on the CPU."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


# What one request gives a network: (H, W, 3) uint8 pixels and its condition (a multi-style
# network's (S,) style weights; None for the others).
Payload = tuple[np.ndarray, np.ndarray | None]


def model_of(key: tuple[str, int, int]) -> str:
    """The batcher's label of a (model, height, width) key: its metrics are per model."""
    return key[0]


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError)


def is_device_error(e: BaseException) -> bool:
    """What a forward pass that the device could not run raises: torch reports out of memory,
    a tensor over 32-bit index math and CUDA errors as RuntimeError. The batcher retries such
    a batch in halves."""
    return isinstance(e, RuntimeError)


@dataclass(eq=False)
class LoadedModel:
    name: str
    manifest: Manifest
    module: nn.Module            # as loaded (device, dtype): the base path runs it
    device: torch.device
    dtype: torch.dtype
    policy: ModelPolicy = field(default_factory=lambda: policies.fixed_policy("base", 8))
    runners: dict[str, execution.Runner] = field(default_factory=dict)  # other paths in use
    activations: ActivationSizes | None = field(default=None, repr=False)  # None: unbounded
    staging: Staging | None = field(default=None, repr=False)  # CUDA: the registry's

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def factor(self) -> int:
        """Output side / input side: 1 for style transfer."""
        return (self.manifest.factor or 1) if self.task == "superres" else 1

    @property
    def digest(self) -> str:
        return self.manifest.sha256

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def styles(self) -> tuple[str, ...]:
        """The styles a multi-style network holds, in the order of its weights; () for a
        network of one style (its name is the style) or for super-resolution."""
        if self.manifest.architecture != "multistyle":
            return ()
        return tuple(self.manifest.options.get("styles", ()))

    def activation_batch_limit(self, height: int, width: int, budget_bytes: int | None) -> int:
        """The most images of (height, width) in one batch whose largest intermediate tensor
        fits 32-bit index math and `budget_bytes` (service/activations.py)."""
        if self.activations is None:
            return INDEX_LIMIT
        return batch_limit(self.activations.per_image(height, width), self.dtype.itemsize,
                           budget_bytes)

    def predicted_s(self, height: int, width: int, pixels: int | None = None) -> float | None:
        """Seconds of compute for a (height, width) input, or `pixels` input pixels run in
        pieces of about that size (tiles), from the policy's measured cost at the nearest
        size: its cheapest per-image cost there, scaled by pixels. None when nothing was
        measured (the fixed policy)."""
        choice = self.policy.choose(height, width)
        if not choice.side or not choice.per_image_ms:
            return None
        ms_per_pixel = min(choice.per_image_ms.values()) / choice.side ** 2
        return ms_per_pixel * (pixels if pixels is not None else height * width) / 1000

    def smoke(self) -> None:
        """One tiny forward pass on the path the policy chose: the warm-up at load, and the
        device's health check later (`Registry.health_check`)."""
        side = 4 * MIN_SIDE_PX if self.task == "style" else MIN_SIDE_PX
        n = len(self.styles)
        self.run([np.zeros((side, side, 3), np.uint8)],
                 [np.full(n, 1 / n, np.float32)] if n else None)

    def run_module(self, x: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
        """The base path: `module` as loaded (looked up at each call, so it can be swapped),
        in the default layout on every device (`execution.base_path`: channels_last is slower
        with instance norm, which makes its input contiguous). `mix`: a multi-style network's
        (N, S) style weights."""
        layout = execution.memory_format(execution.base_path(self.device, self.dtype))
        with torch.inference_mode():
            x = x.to(self.dtype).contiguous(memory_format=layout)   # as the registry loaded it
            return self.module(x) if mix is None else self.module(x, mix)

    def run(self, images: Sequence[np.ndarray],
            conditions: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """(H, W, 3) uint8 arrays of one shape -> outputs, (fH, fW, 3) uint8, on the path the
        policy chose for that size. A multi-style network needs `conditions`, one (S,) row of
        style weights per image. Thread-safe: the batcher's lanes call it concurrently; on
        CUDA each lane stages its copies on its own streams (`service.staging`)."""
        mix = self._mix(conditions, len(images))
        height, width = images[0].shape[:2]
        forward = functools.partial(_forward, self.runners.get(
            self.policy.choose(height, width).path, self.run_module))
        try:
            if self.staging is not None:                       # CUDA
                staged = self.staging.buffers.get((len(images), height, width, 3), torch.uint8)
                np.stack(images, out=staged.numpy())
                inputs = [staged]
                if mix is not None:
                    inputs.append(self.staging.buffers.get(mix.shape, mix.dtype).copy_(mix))
                out = self.staging.run(inputs, forward).numpy().copy()   # out of the buffer
            else:   # the CPU (`to` and `cpu` do nothing there)
                x = torch.from_numpy(np.stack(images)).to(self.device)
                extra = () if mix is None else (mix.to(self.device),)
                out = forward(x, *extra).cpu().numpy()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise
        return list(out)

    def _mix(self, conditions: Sequence[np.ndarray | None] | None, n: int
             ) -> torch.Tensor | None:
        """The (N, S) float32 weights of a multi-style network's batch; None for the others."""
        if not self.styles:
            if conditions is not None and any(c is not None for c in conditions):
                raise ValueError(f"model {self.name} takes no condition")
            return None
        if conditions is None or len(conditions) != n or any(c is None for c in conditions):
            raise ValueError(f"model {self.name} needs one row of style weights per image")
        mix = np.stack([np.asarray(c, np.float32) for c in conditions])
        if mix.shape != (n, len(self.styles)):
            raise ValueError(f"model {self.name}: style weights must be ({n}, "
                             f"{len(self.styles)}), got {mix.shape}")
        return torch.from_numpy(mix)


def _forward(runner: execution.Runner, x: torch.Tensor, *mix: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> the runner's (N, fH, fW, 3) uint8 output, on x's device."""
    with torch.inference_mode():
        y = runner((x.permute(0, 3, 1, 2).float() / 255).contiguous(), *mix)
        y = (y.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return y.permute(0, 2, 3, 1).contiguous()


def equal_weights(runner: execution.Runner, styles: int) -> execution.Runner:
    """A multi-style runner as a one-input runner: every image with all styles weighted equally."""
    return lambda x: runner(x, x.new_full((x.shape[0], styles), 1 / styles))


class Registry:
    """Loads the store's models (all, or `names`) onto one device.

    `policy="fixed"`: every model runs its module with batches up to `max_batch_size`, one at a
    time. `policy="measure"`: see `service.policy`; `policy_sizes` are output sides (the
    super-resolution models are measured at the matching low-resolution inputs).

    `lanes`: the batches the batcher runs at once, each on its own worker thread. On a CPU the
    threads are split between them; 0 leaves the count to the measured policy (else 1). On
    CUDA each has its own streams and pinned staging (`service.staging`); 0 means 2, so that
    one batch's upload and download overlap another's compute (`lanes` sets more).
    `run_batch` is the function the batcher runs its batches with.
    """

    def __init__(self, store_root: Path | str, names: Sequence[str] = (), device: str = "auto",
                 dtype: str = "auto", *, policy: str = "fixed",
                 policy_sizes: Sequence[int] = (256, 512), policy_budget_s: float = 8.0,
                 max_batch_size: int = 8, max_batch_pixels: int = 4 * 512 * 512,
                 lanes: int = 0, max_activation_bytes: int | None = None,
                 host_activation_bytes: int | None = None,
                 policy_store: PolicyStore | None = None, remeasure: bool = False) -> None:
        self.store = ModelStore(store_root)
        self.wanted = list(names)
        self.device = resolve_device(device)
        self.dtype_setting = dtype
        self.dtype = resolve_dtype(dtype, self.device)
        self.policy = policy
        self.policy_sizes = sorted(policy_sizes)
        self.policy_budget_s = policy_budget_s
        self.max_batch_size = max_batch_size
        self.max_batch_pixels = max_batch_pixels
        # On the CPU the activations are host memory: half the memory budget unless set.
        self.max_activation_bytes = (max_activation_bytes if max_activation_bytes is not None
                                     or self.device.type != "cpu" else host_activation_bytes)
        self.threads = torch.get_num_threads()
        # Batches at once: `lanes`; when it is 0, measured on a CPU (1 until then), 2 on CUDA.
        self.lanes = lanes or (2 if self.device.type == "cuda" else 1)
        self.staging = Staging(self.device) if self.device.type == "cuda" else None
        self._measure_lanes = lanes == 0
        self._models: dict[str, LoadedModel] = {}
        self._measured: dict[str, LoadedModel] = {}   # architecture -> first model measured
        self._lane_rates: list[dict[int, float]] = []
        self._activation_sizes: dict[str, ActivationSizes] = {}
        self._reloading = threading.Lock()
        self.refused: dict[str, dict[str, str]] = {}   # name -> the version refused, and why
        self.policy_store = policy_store or PolicyStore(None)
        self.remeasure = remeasure

    @property
    def base_path(self) -> str:
        return execution.base_path(self.device, self.dtype)

    def load_all(self) -> list[LoadedModel]:
        """Load, convert, measure and warm up every model (blocking; call from a thread)."""
        names = self.wanted or self.store.names()
        self.threads = torch.get_num_threads()
        environment = policy_store.environment(self.device, self.threads)
        with self._reloading:
            for name in names:
                self._models[name] = self._load(name, environment)
        if self._lane_rates:
            self.lanes = policies.choose_lanes(self._lane_rates)
            log.info("lanes: %d (images/s by lanes: %s)", self.lanes, self._lane_rates)
        self.policy_store.save()
        return self.models()

    def reload(self) -> dict[str, Any]:
        """Pick up the models added, replaced or removed in the store while serving (blocking;
        call from a thread). A new version is loaded, measured (or its stored policy reused),
        warmed up and checked (`check`) before it takes the old one's place in one step; one
        that fails is refused, with the reason in `refused`, and the old version keeps
        serving; `gates` has the figures each version checked was judged on. A model removed
        from the store stops being served."""
        with self._reloading:
            names = self.wanted or self.store.names()
            environment = policy_store.environment(self.device, self.threads)
            report: dict[str, Any] = {"added": [], "replaced": [], "removed": [],
                                      "refused": {}, "gates": {}}
            for name in names:
                current = self._models.get(name)
                try:
                    manifest = self.store.manifest(name)
                    digest = manifest.sha256
                    if current is not None and current.digest == digest:
                        # the same weights (the store may be back to what serves); what the
                        # manifest says of them may be new, e.g. a style learned again
                        current.manifest = manifest
                        self.refused.pop(name, None)
                        continue
                    model = self._load(name, environment)
                    verdict = check(model, self._paintings(model, current))
                except Exception as e:   # a broken file is refused like a failed check
                    digest, verdict = "", quality.Verdict(f"{type(e).__name__}: {e}")
                if verdict.figures:
                    report["gates"][name] = verdict.figures
                problem = verdict.problem
                if problem is not None:
                    log.warning("model %s (%s) refused: %s", name, digest[:12], problem)
                    self.refused[name] = {"digest": digest, "reason": problem}
                    report["refused"][name] = problem
                    continue
                self._models[name] = model     # one assignment: requests see old or new
                self.refused.pop(name, None)
                report["replaced" if current is not None else "added"].append(name)
                log.info("model %s %s: %s", name,
                         "replaced" if current is not None else "added", digest[:12])
            for name in [n for n in self._models if n not in names]:
                del self._models[name]
                report["removed"].append(name)
                log.info("model %s removed", name)
            self.policy_store.save()
            return report

    def _paintings(self, model: LoadedModel, current: LoadedModel | None = None
                   ) -> dict[str, bytes]:
        """The paintings the store keeps of `model`'s styles, by style name; with `current`,
        of the styles that `current` does not already paint the same (a style learned into a
        multi-style network changes its own rows only: the others passed the gate before)."""
        if model.task != "style":
            return {}
        kept = ({s: self.store.painting(model.name, s) for s in model.styles} if model.styles
                else {model.name: self.store.painting(model.name)})
        same = unchanged_styles(model, current) if current is not None else set()
        return {style: painting for style, painting in kept.items()
                if painting is not None and style not in same}

    def _load(self, name: str, environment: dict[str, Any]) -> LoadedModel:
        """One model loaded, converted, measured (or its stored policy reused), warmed up."""
        started = time.monotonic()
        module, manifest = self.store.load(name)
        # float32 as stored, before the conversion below rounds it: what the policy builds
        # its candidate paths from and checks them against
        weights = copy.deepcopy(module) if self.policy == "measure" else module
        layout = execution.memory_format(self.base_path)   # what run_module feeds it
        module = module.to(self.device, self.dtype).to(memory_format=layout).eval()
        model = LoadedModel(name, manifest, module, self.device, self.dtype,
                            policies.fixed_policy(self.base_path, self.max_batch_size),
                            staging=self.staging)
        arch = architecture(manifest)    # the same shapes for the same architecture
        if arch not in self._activation_sizes:
            self._activation_sizes[arch] = ActivationSizes(module, len(model.styles))
        model.activations = self._activation_sizes[arch]
        if self.policy == "measure" and self.policy_sizes:
            key = self._policy_key(environment, manifest)
            stored = None if self.remeasure else self.policy_store.get(name, key)
            if stored is None or not self._reuse(model, weights, stored):
                self._measure(model, weights)
                self.policy_store.put(name, key, model.policy)
        model.smoke()   # warm-up: kernels, allocator
        log.info("loaded model %s (%s, factor %s) on %s/%s in %.2fs; policy %s",
                 name, model.task, model.factor, self.device, model.dtype_name,
                 time.monotonic() - started,
                 [(s.side, s.path, s.max_batch) for s in model.policy.sizes]
                 or model.policy.default)
        return model

    def _export(self, model: LoadedModel) -> Callable[[nn.Module], bytes]:
        """The ONNX export of `model`'s rewritten network, kept across starts."""
        return functools.partial(self.policy_store.export,
                                 key=PolicyStore.export_key(model.manifest.sha256))

    def _policy_key(self, environment: dict, manifest: Manifest) -> str:
        """Everything `_measure` depends on for this model: the stored policy is reused only
        when it is all unchanged."""
        return PolicyStore.key(environment, manifest.sha256, {
            "dtype": self.dtype_setting, "sizes": self.policy_sizes,
            "max_batch": self.max_batch_size, "max_pixels": self.max_batch_pixels,
            "budget_s": self.policy_budget_s, "measure_lanes": self._measure_lanes,
            "base": self.base_path})

    def _reuse(self, model: LoadedModel, weights: nn.Module, stored: ModelPolicy) -> bool:
        """Build the paths a stored policy chose, without timing them; False if one of them
        cannot be built here any more (then the model is measured)."""
        started = time.monotonic()
        # On the CPU the copy made for measuring serves as it is (measuring, should this
        # fail, copies it again); elsewhere it stays on the CPU for that.
        on_device = weights if self.device.type == "cpu" else copy.deepcopy(weights).to(
            self.device)
        paths = execution.candidates(
            on_device, self.device, self.dtype_setting, self.dtype,
            only=stored.paths(), max_batch=self.max_batch_size, export=self._export(model))
        wanted = stored.paths() - {self.base_path}
        if not wanted <= set(paths):
            log.warning("stored policy of %s: paths %s unavailable; measuring", model.name,
                        sorted(wanted - set(paths)))
            return False
        model.policy = replace(
            stored, source=stored.source if stored.source.startswith("stored")
            else f"stored ({stored.source})", warmup_s=time.monotonic() - started)
        model.runners = {p: paths[p] for p in wanted}
        if self.device.type == "cpu" and stored.lanes_images_per_s and self._measure_lanes:
            self._lane_rates.append(stored.lanes_images_per_s)
        self._measured.setdefault(architecture(model.manifest), model)
        return True

    def _measure(self, model: LoadedModel, weights: nn.Module) -> None:
        """Choose `model`'s paths and batch sizes; the first model of an architecture is timed,
        the others only checked for accuracy (the weights do not change the cost). `weights`:
        the network in float32 on the CPU, as stored."""
        started = time.monotonic()
        arch = architecture(model.manifest)
        first = self._measured.get(arch)
        sides = sorted({max(MIN_SIDE_PX, s // model.factor) for s in self.policy_sizes})
        styles = len(model.styles)
        paths: dict[str, execution.Runner] = {
            self.base_path: model.run_module, **execution.candidates(
                copy.deepcopy(weights).to(self.device), self.device, self.dtype_setting,
                self.dtype,
                only=None if first is None else first.policy.paths(),
                max_batch=self.max_batch_size, export=self._export(model))}
        if self.device.type == "cpu" and self.dtype == torch.float32:
            reference = paths[self.base_path]  # float32 on the CPU already: the reference itself
        else:
            reference = execution.TorchRunner(weights, torch.float32)
        # What is timed and checked: a multi-style network with every style weighted equally
        # (the weights do not change the cost; the rewrite leaves the norm layers as they are).
        runners = {p: equal_weights(r, styles) for p, r in paths.items()} if styles else paths
        errors = policies.check_errors(runners, equal_weights(reference, styles) if styles
                                       else reference,
                                       policies.test_image(sides[0]).to(self.device))
        if first is None:
            model.policy = policies.measure(
                runners, errors, self.device, sides, base=self.base_path,
                max_batch=self.max_batch_size, max_pixels=self.max_batch_pixels,
                budget_s=self.policy_budget_s)
            if self.device.type == "cpu" and self.threads > 1 and self._measure_lanes:
                choice = model.policy.sizes[0]
                model.policy.lanes_images_per_s = policies.measure_lanes(
                    runners[choice.path], choice.side, self.threads,
                    [n for n in (1, 2, 4) if n <= self.threads and self.threads % n == 0],
                    solo_batch=choice.max_batch)
                self._lane_rates.append(model.policy.lanes_images_per_s)
            self._measured[arch] = model
        else:
            model.policy = policies.adopt(first.policy, errors, base=self.base_path,
                                          source=f"shared with {first.name}")
        model.policy.warmup_s = time.monotonic() - started
        model.runners = {p: paths[p] for p in model.policy.paths() if p != self.base_path}

    def max_batch(self, key: tuple[str, int, int]) -> int:
        """The batcher's limit for a (model, height, width) key: the policy's, and no batch
        whose largest intermediate tensor is over the activation bound."""
        model = self._models.get(key[0])
        if model is None:
            return self.max_batch_size
        _, height, width = key
        return min(model.policy.choose(height, width).max_batch,
                   model.activation_batch_limit(height, width, self.max_activation_bytes))

    def run_batch(self, key: tuple[str, int, int], items: Sequence[Payload]) -> list[np.ndarray]:
        """The batcher's function: one forward pass of the model `key[0]` over `items` (one
        (height, width) = `key[1:]`). The key holds no style, so a multi-style network's
        requests for different styles share it (each item brings its own row of weights)."""
        model = self._models.get(key[0])
        if model is None:
            raise LookupError(f"model {key[0]} is not loaded")
        conditions = [c for _, c in items]
        return model.run([p for p, _ in items],
                         conditions if any(c is not None for c in conditions) else None)

    def use_lanes(self, lanes: int) -> None:
        """On a batch worker, before a batch that holds `lanes` of the `self.lanes` lanes
        (one lane: all the threads)."""
        if self.device.type == "cpu":
            execution.use_threads(max(1, self.threads * lanes // self.lanes))

    def health_check(self) -> None:
        """A tiny forward pass of one loaded model; raises what the device raises."""
        if self._models:
            self.models()[0].smoke()

    def models(self) -> list[LoadedModel]:
        return [self._models[n] for n in sorted(self._models)]

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def styles(self) -> list[str]:
        """Every style a request may name: the single-style networks and the styles the
        multi-style networks hold."""
        names = {m.name for m in self.models() if m.task == "style" and not m.styles}
        return sorted(names.union(*(m.styles for m in self.models())))

    def multistyle(self) -> list[LoadedModel]:
        """The multi-style networks, by name."""
        return [m for m in self.models() if m.styles]

    def superres(self, factor: int) -> list[LoadedModel]:
        """The super-resolution models for `factor`, by name."""
        return [m for m in self.models() if m.task == "superres" and m.factor == factor]

    def factors(self) -> list[int]:
        return sorted({m.factor for m in self.models() if m.task == "superres"})

    def gpu_memory_bytes(self) -> float:
        if self.device.type != "cuda":
            return 0.0
        return float(torch.cuda.memory_allocated(self.device))
