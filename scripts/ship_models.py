"""Copy trained models into the shipped store: as fp16 where its output stays within one level
of 255 of the fp32 output on the content images, else as fp32.

    python scripts/ship_models.py /path/to/trained/store udnie candy ... [--dest model_store]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import torch

from model_store import ModelStore, data_root
from train.data import load_rgb

CONTENT = data_root() / "content-images"
MANIFEST_OWN = ("name", "task", "architecture", "options", "sha256", "created", "format_version")


def fp16_error_levels(net: torch.nn.Module, factor: int) -> float:
    """Largest difference, in levels of 255, between the network and its fp16-rounded copy
    (for a multi-style network, over each of its styles)."""
    low = copy.deepcopy(net)
    low.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})
    styles = getattr(net, "styles", None)
    mixes = torch.eye(len(styles)).unsqueeze(1) if styles else [None]  # (S, 1, S) one-hots
    worst = 0.0
    with torch.inference_mode():
        for path in sorted(CONTENT.glob("*.jpg")):
            x = load_rgb(path, 256 // factor).float().unsqueeze(0) / 255
            for mix in mixes:
                args = (x,) if mix is None else (x, mix)
                worst = max(worst, float((net(*args) - low(*args)).abs().max() * 255))
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path)
    p.add_argument("names", nargs="+")
    p.add_argument("--dest", type=Path, default=Path("model_store"))
    args = p.parse_args()
    source, dest = ModelStore(args.source), ModelStore(args.dest)
    for name in args.names:
        net, manifest = source.load(name)
        error = fp16_error_levels(net, manifest.factor or 1)
        dtype = torch.float16 if error <= 1.0 else torch.float32
        fields = {k: v for k, v in dataclasses.asdict(manifest).items() if k not in MANIFEST_OWN}
        fields["metrics"] = {**manifest.metrics, "fp16_max_error_levels": round(error, 3)}
        dest.save(net, name=name, task=manifest.task, architecture=manifest.architecture,
                  options=manifest.options, dtype=dtype, created=manifest.created, **fields)
        print(f"{name}: shipped as {dtype} (fp16 would differ by {error:.2f} levels of 255)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
