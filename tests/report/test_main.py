"""Every `python -m report` subcommand parses its flags and documents them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from report.__main__ import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m report " + command in out
    assert "(default:" in out


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sr", "--store", str(tmp_path)])
    assert e.value.code == 2
    assert "no super-resolution models" in capsys.readouterr().err


def test_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "report", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert "{sr,style,style-weight,speed,gallery,learned,readme}" in done.stdout
