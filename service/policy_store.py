"""The measured policies, kept across starts.

Measuring how each model runs (service.policy) took 77 s of a 78 s start on a 2-core CPU, and a
restart or a new pod of the same image on the same kind of node measures the same thing again.
So the registry writes every model's policy to one JSON file, and a later start reuses a
model's entry when everything the measurement depends on is unchanged: the device model, the
cores, the library versions, the model's weights (its digest) and the settings that bound the
search. Anything else differing, that model is measured again; `--remeasure` measures all.
Entries are kept per key, a few per model, so that pods on different kinds of node sharing one
file (a volume, k8s/) do not overwrite each other's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_store.onnx_export import onnx_bytes
from service.policy import ModelPolicy

log = logging.getLogger("service.policy_store")

FORMAT = 2
KEYS_PER_MODEL = 8     # the most recently stored kept
KEPT_EXPORTS = 32      # ONNX exports kept, the newest
LIBRARIES = ("torch", "onnxruntime", "openvino", "numpy")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model from /proc/cpuinfo (the machine type elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """What every model's measurement on this process depends on, besides its own weights."""
    return {"device": device_name(device), "threads": threads, "cores": os.cpu_count(),
            "versions": library_versions()}


class PolicyStore:
    """One JSON file: {"format", "models": {name: {key: policy, ...}}}, oldest key first."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path else None
        self._models: dict[str, dict[str, dict[str, Any]]] = {}
        self._changed = False
        if self.path is None or not self.path.is_file():
            return
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") == FORMAT:
                self._models = dict(doc["models"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring the stored policies in %s: %s", self.path, e)

    @staticmethod
    def key(environment: dict[str, Any], digest: str, settings: dict[str, Any]) -> str:
        """One string for everything a model's measurement depends on."""
        text = json.dumps({"environment": environment, "digest": digest, "settings": settings},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, name: str, key: str) -> ModelPolicy | None:
        """The stored policy of `name`, if it was measured under this very key."""
        entry = self._models.get(name, {}).get(key)
        if entry is None:
            return None
        try:
            return ModelPolicy.from_dict(entry)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("ignoring the stored policy of %s: %s", name, e)
            return None

    def put(self, name: str, key: str, policy: ModelPolicy) -> None:
        entries = self._models.setdefault(name, {})
        entries.pop(key, None)
        entries[key] = policy.as_dict(rounded=False)
        self._changed = True
        for old in list(entries)[:-KEYS_PER_MODEL]:
            del entries[old]

    def export(self, module: nn.Module, key: str) -> bytes:
        """`onnx_bytes(module)`, kept beside the policies under `key` (it names the weights,
        the transformation and the versions): the export took a third of a start."""
        folder = self.path.parent / "exports" if self.path is not None else None
        if folder is not None and (folder / f"{key}.onnx").is_file():
            with contextlib.suppress(OSError):
                return (folder / f"{key}.onnx").read_bytes()
        data = onnx_bytes(module)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".export-")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, folder / f"{key}.onnx")
                for old in sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime,
                                  reverse=True)[KEPT_EXPORTS:]:
                    old.unlink(missing_ok=True)
            except OSError as e:
                log.warning("could not keep the export in %s: %s", folder, e)
        return data

    @staticmethod
    def export_key(digest: str) -> str:
        """The export of one model's rewritten network, by these libraries."""
        return PolicyStore.key({"versions": library_versions()}, digest, {"export": "rewrite"})

    def save(self) -> None:
        """Write what was put since the last save, atomically (several worker processes may
        write the same file)."""
        if self.path is None or not self._changed:
            return
        self._changed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".policy-")
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "models": self._models}, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as e:   # a read-only volume: start as fast as the measurement allows
            log.warning("could not store the policies in %s: %s", self.path, e)
