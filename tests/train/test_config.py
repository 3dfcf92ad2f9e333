"""The CLI generated from the config dataclasses: types, choices, defaults, aliases."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from train.config import (
    MultiStyleConfig,
    StyleConfig,
    SuperResConfig,
    TrainConfig,
    add_arguments,
    from_args,
)


def parse(cls: type[TrainConfig], argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return from_args(cls, parser.parse_args(argv))


@pytest.mark.parametrize("cls", [TrainConfig, StyleConfig, SuperResConfig, MultiStyleConfig])
def test_no_flags_give_the_defaults(cls):
    assert parse(cls, []) == cls()


def test_flags_are_typed():
    cfg = parse(SuperResConfig, ["--iterations", "7", "--lr", "0.5", "--residual",
                                 "--norm", "instance", "--loss", "pixel", "--image-size", "96"])
    assert isinstance(cfg, SuperResConfig)
    assert (cfg.iterations, cfg.lr, cfg.residual, cfg.norm, cfg.loss, cfg.patch_size) == (
        7, 0.5, True, "instance", "pixel", 96)


@pytest.mark.parametrize(("flag", "choices"), [
    ("--norm", ["batch", "instance", "none"]),
    ("--upsample", ["transposed", "resize_conv"]),
    ("--padding", ["zero", "reflect"]),
    ("--amp", ["auto", "bf16", "fp16", "none"]),
    ("--save-dtype", ["float16", "float32"]),
    ("--loss", ["feat", "pixel"]),
])
def test_literal_fields_take_only_their_values(flag, choices, capsys):
    with pytest.raises(SystemExit) as e:
        parse(SuperResConfig, [flag, "other"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid choice: 'other'" in err
    assert all(choice in err for choice in choices)


def test_every_field_is_a_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser, MultiStyleConfig)
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(MultiStyleConfig)} <= dests
