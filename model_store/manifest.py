"""The manifest: what a trained artifact is, how it was made, and how well it does."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model_store.errors import InvalidManifest

FORMAT_VERSION = 1
Task = Literal["style", "superres"]


@dataclass(frozen=True)
class Manifest:
    name: str
    task: Task
    architecture: str                 # key of nets.architectures.ARCHITECTURES
    options: dict[str, Any]           # constructor options of that architecture
    sha256: str                       # of model.safetensors
    factor: int | None = None         # super-resolution only
    loss_network: str = ""            # e.g. "vgg19-keras-imagenet"
    training: dict[str, Any] = field(default_factory=dict)   # config, data, command line
    iterations: int = 0
    final_losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)    # evaluation results when known
    created: str = ""                 # ISO 8601, UTC
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.task not in ("style", "superres"):
            raise InvalidManifest(f"model {self.name!r}: task must be style or superres, "
                                  f"got {self.task!r}")
        if self.task == "superres" and self.factor not in (2, 4, 8):
            raise InvalidManifest(f"model {self.name!r}: superres needs factor 2, 4 or 8, "
                                  f"got {self.factor!r}")
        if self.format_version != FORMAT_VERSION:
            raise InvalidManifest(f"model {self.name!r}: format_version {self.format_version} "
                                  f"is not supported (expected {FORMAT_VERSION})")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidManifest(f"unknown manifest fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as e:
            raise InvalidManifest(f"manifest is incomplete: {e}") from None

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidManifest(f"missing manifest {path}") from None
        except json.JSONDecodeError as e:
            raise InvalidManifest(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise InvalidManifest(f"{path} must hold a JSON object")
        return cls.from_dict(data)
