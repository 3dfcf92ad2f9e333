"""The packages import one way (ARCHITECTURE.md): `nets` (torch and the standard library only)
at the bottom, `model_store` on it, `train` and `service` side by side on those two (neither
imports the other), `bench` and `report` on top. Every import counts, also one inside a
function, where a lazy import would hide a cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("nets", "model_store", "train", "service", "bench", "report")
# What each package may import from the project (besides itself).
ALLOWED = {
    "nets": set(),
    "model_store": {"nets"},
    "train": {"nets", "model_store"},
    "service": {"nets", "model_store"},
    "bench": {"nets", "model_store", "train", "service", "report"},
    "report": {"nets", "model_store", "train", "service", "bench"},
}
NETS_THIRD_PARTY = {"torch"}   # the ground floor runs anywhere torch does


def imported(source: str) -> set[str]:
    """The top-level names of every module `source` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str, source: str) -> set[str]:
    """The imports of a module of `package` that break the layers."""
    names = imported(source) - {package, "__future__"}
    bad = {n for n in names if n in PROJECT and n not in ALLOWED[package]}
    bad |= {n for n in names if n == "tests"}
    if package == "nets":
        bad |= {n for n in names - set(PROJECT)
                if n not in sys.stdlib_module_names and n not in NETS_THIRD_PARTY}
    return bad


def modules() -> list[Path]:
    return sorted(p for package in PROJECT for p in (REPO / package).rglob("*.py"))


def test_every_package_is_there() -> None:
    assert {p.relative_to(REPO).parts[0] for p in modules()} == set(PROJECT)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layers(path: Path) -> None:
    package = path.relative_to(REPO).parts[0]
    assert not violations(package, path.read_text()), \
        f"{path.relative_to(REPO)} imports {sorted(violations(package, path.read_text()))}"


@pytest.mark.parametrize("package, source, expected", [
    ("model_store", "def load():\n    from train.architectures import build\n", {"train"}),
    ("train", "import service.registry\n", {"service"}),
    ("service", "from train import loop\n", {"train"}),
    ("service", "from bench.server import serve\n", {"bench"}),
    ("nets", "import numpy as np\nimport torch\nimport math\n", {"numpy"}),
    ("nets", "from model_store import ModelStore\n", {"model_store"}),
    ("bench", "import tests.helpers\n", {"tests"}),
    ("report", "from bench import summary\nfrom service.registry import Registry\n", set()),
    ("service", "from .registry import Registry\nimport torch\n", set()),
])
def test_the_rule_catches_what_it_should(package: str, source: str, expected: set[str]) -> None:
    assert violations(package, source) == expected
