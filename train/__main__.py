"""python -m train {style,superres,multistyle,gatys,style-weight,eval,info}: each subcommand
lives in its own module. The measurements behind the README are `python -m report`."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import sys
from types import ModuleType

from model_store import StoreError
from train.config import add_arguments, from_args

# Training tasks: a module with CONFIG (a frozen dataclass whose fields are the flags) and
# run(cfg).
TASKS = {
    "style": ("train.style_training", "train a style transfer network (§4.1)"),
    "superres": ("train.superres_training", "train a super-resolution network (§4.2)"),
    "multistyle": ("train.multistyle_training", "train one network for many styles (CIN)"),
}
# Tools: a module with add_parser_arguments(parser) and main(args).
TOOLS = {
    "gatys": ("train.gatys", "stylise by optimisation (Gatys et al.), the paper's baseline"),
    "style-weight": ("train.style_weight", "λ_s by the rule of --style-weight auto"),
    "eval": ("train.evaluate", "PSNR/SSIM of bicubic and the shipped SR models on HR images"),
    "info": ("train.info", "parameter counts and GFLOPs of each architecture"),
}
COMMANDS = {**TASKS, **TOOLS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command = importlib.import_module(module)
        if name in TASKS:
            add_arguments(p, command.CONFIG)
            p.set_defaults(run=functools.partial(train, command))
        else:
            command.add_parser_arguments(p)
            p.set_defaults(run=command.main)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, StoreError) as e:
        parser.exit(2, f"error: {e}\n")


def train(task: ModuleType, args: argparse.Namespace) -> int:
    task.run(from_args(task.CONFIG, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
