"""ARCHITECTURE.md matches the code: its layer picture names every package the import test
knows, and its list of the files a stylize request passes through is what a trace of a running
`python -m service` finds (scripts/request_path.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from request_path import request_path  # noqa: E402

from tests.test_layers import PROJECT  # noqa: E402

DOC = (REPO / "ARCHITECTURE.md").read_text()


def documented_path() -> list[str]:
    block = DOC.split("<!-- request-path -->")[1].split("<!-- /request-path -->")[0]
    return re.findall(r"^\d+\. `([^`]+)`", block, flags=re.MULTILINE)


def test_the_layer_picture_names_every_package() -> None:
    picture = DOC.split("```")[1]
    assert set(re.findall(r"(\w+)/", picture)) == set(PROJECT)


def test_the_documented_files_exist() -> None:
    files = documented_path()
    assert len(files) > 10
    assert all((REPO / f).is_file() for f in files), files


def test_the_documented_request_path_is_the_traced_one() -> None:
    assert documented_path() == request_path("udnie")
