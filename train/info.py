"""`python -m train info`: parameter counts and GFLOPs of the transform networks.

GFLOPs are 2 x the multiply-adds of the convolution and transposed-convolution layers, counted
exactly from their shapes by torch.utils.flop_counter (the convention of most papers). Biases,
normalisation, activations, padding and tanh are not counted: together they are well under 1%.
The networks are built on the meta device, so even 1024x1024 costs no memory and no time.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nets.style_net import StyleNet
from nets.superres_net import SuperResNet

OUTPUT_SIDES = (256, 512, 1024)

# name -> (builder with the paper's options, input side for a given output side)
NETWORKS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], int]]] = {
    "style": (StyleNet, lambda side: side),
    "superres_x4": (lambda: SuperResNet(4), lambda side: side // 4),
    "superres_x8": (lambda: SuperResNet(8), lambda side: side // 8),
}


def parameter_count(net: nn.Module) -> int:
    """Learned parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in net.parameters())


def gflops(net: nn.Module, input_shape: tuple[int, ...]) -> float:
    """2 x multiply-adds of one forward pass on a meta tensor of `input_shape`, in 1e9."""
    net = net.to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() / 1e9


def measure(sides: tuple[int, ...] = OUTPUT_SIDES) -> dict[str, dict]:
    """{network: {"parameters": n, "gflops": {output side: GFLOPs}, "input": {side: side}}}."""
    table = {}
    for name, (builder, input_side) in NETWORKS.items():
        with torch.device("meta"):
            net = builder()
        table[name] = {
            "parameters": parameter_count(net),
            "input": {str(s): input_side(s) for s in sides},
            "gflops": {str(s): gflops(net, (1, 3, input_side(s), input_side(s))) for s in sides},
        }
    return table


def format_table(table: dict[str, dict]) -> str:
    sides = list(next(iter(table.values()))["gflops"])
    head = f"{'network':<14}{'params':>11}" + "".join(f"{'GFLOPs @' + s:>15}" for s in sides)
    lines = [head]
    for name, row in table.items():
        lines.append(f"{name:<14}{row['parameters']:>11,}"
                     + "".join(f"{row['gflops'][s]:>15.1f}" for s in sides))
    lines.append("Sides are the output size (SR input = side / factor); GFLOPs = 2 x conv "
                 "multiply-adds, batch 1, paper options (batch norm, transposed convs).")
    return "\n".join(lines)


def add_parser_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default="", help="also write the table to this JSON file")


def main(args: argparse.Namespace) -> int:
    table = measure()
    print(format_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0
