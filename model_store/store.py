"""A folder of models, one sub-folder each: model.safetensors + manifest.json. No pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from model_store.errors import DigestMismatch, InvalidManifest, ModelNotFound, StoreError
from model_store.manifest import Manifest
from nets.architectures import build

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
PAINTING = "painting.jpg"
PAINTING_SIDE = 256   # as the style networks see it in training (their Gram targets' size)
SHIPPED_ROOT = Path(__file__).resolve().parent
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_name(name: str) -> str:
    """Model names become folder names, so only a safe alphabet is allowed."""
    if not _NAME.match(name):
        raise StoreError(f"invalid model name {name!r}: use a-z, 0-9, '_' and '-'")
    return name


class ModelStore:
    """Lists, validates, loads and saves the models under `root` (the shipped store by default)."""

    def __init__(self, root: Path | str = SHIPPED_ROOT) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())

    def _dir(self, name: str) -> Path:
        path = self.root / check_name(name)
        if not (path / MANIFEST).is_file():
            raise ModelNotFound(f"no model {name!r} in {self.root}; "
                                f"available: {', '.join(self.names()) or 'none'}")
        return path

    def manifest(self, name: str) -> Manifest:
        manifest = Manifest.read(self._dir(name) / MANIFEST)
        if manifest.name != name:
            raise InvalidManifest(f"folder {name!r} holds a manifest named {manifest.name!r}")
        return manifest

    def manifests(self) -> list[Manifest]:
        return [self.manifest(n) for n in self.names()]

    def validate(self, name: str) -> Manifest:
        """Check manifest, digest and that the weights fit the architecture; return the manifest."""
        self.load(name)
        return self.manifest(name)

    def load(self, name: str) -> tuple[nn.Module, Manifest]:
        """The network in eval mode, fp32 on the CPU, after checking the weights' sha256."""
        manifest = self.manifest(name)
        weights = self._dir(name) / WEIGHTS
        if not weights.is_file():
            raise ModelNotFound(f"model {name!r} has no {WEIGHTS} in {weights.parent}")
        digest = sha256_file(weights)
        if digest != manifest.sha256:
            raise DigestMismatch(f"model {name!r}: {WEIGHTS} has sha256 {digest}, "
                                 f"manifest says {manifest.sha256}")
        try:
            net = build(manifest.architecture, manifest.options)
        except (ValueError, TypeError) as e:
            raise InvalidManifest(f"model {name!r}: {e}") from None
        state = {k: v.float() for k, v in load_file(weights).items()}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise InvalidManifest(f"model {name!r}: weights do not fit "
                                  f"{manifest.architecture} {manifest.options}: {e}") from None
        return net.eval(), manifest

    def save(self, net: nn.Module, *, name: str, task: str, architecture: str,
             options: dict[str, Any], dtype: torch.dtype = torch.float32,
             **fields: Any) -> Manifest:
        """Write the network's weights (in `dtype`) and a manifest; returns the manifest."""
        path = self.root / check_name(name)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in net.state_dict().items()}
        save_file(state, str(path / WEIGHTS))
        fields.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
        manifest = Manifest(name=name, task=task, architecture=architecture,  # type: ignore[arg-type]
                            options=options, sha256=sha256_file(path / WEIGHTS), **fields)
        (path / MANIFEST).write_text(manifest.to_json())
        return manifest

    def _painting_path(self, name: str, style: str | None) -> Path:
        """<name>/painting.jpg; a multi-style network's: <name>/paintings/<style>.jpg."""
        folder = self._dir(name)
        return folder / PAINTING if style is None else folder / "paintings" / (
            check_name(style) + ".jpg")

    def painting(self, name: str, style: str | None = None) -> bytes | None:
        """The JPEG of a style's painting kept with its model (of the style `style` of a
        multi-style network), or None: the web page shows it, and the service's reload gate
        measures the model's outputs against it."""
        path = self._painting_path(name, style)
        return path.read_bytes() if path.is_file() else None

    def save_painting(self, name: str, painting: Image.Image, style: str | None = None) -> int:
        """Keep the painting with the model `name` (as its style `style`), its longer side
        PAINTING_SIDE (a JPEG of some 20-40 KB); returns its size in bytes."""
        im = painting.convert("RGB")
        scale = PAINTING_SIDE / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85, optimize=True)
        path = self._painting_path(name, style)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(buf.getvalue())
        return len(buf.getvalue())

    def update_metrics(self, name: str, metrics: dict[str, Any]) -> Manifest:
        """Merge evaluation results into a model's manifest (in one step: a serving replica may
        read it meanwhile)."""
        manifest = self.manifest(name)
        merged = dataclasses.replace(manifest, metrics={**manifest.metrics, **metrics})
        path = self._dir(name) / MANIFEST
        path.with_name(MANIFEST + ".new").write_text(merged.to_json())
        os.replace(path.with_name(MANIFEST + ".new"), path)
        return merged
