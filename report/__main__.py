"""python -m report {sr,style,style-weight,speed,gallery,learned,readme}: measure the shipped models
into docs/, then copy the tables into README.md's generated blocks; each document lives in its
own module."""

from __future__ import annotations

import argparse
import logging
import sys

from bench import summary as bench_summary
from model_store import SHIPPED_ROOT, StoreError, data_root
from report import gallery, learned, readme, speed, sr, style, style_weight
from report.common import DOCS, README

COMMANDS = {
    "sr": (sr, "PSNR/SSIM of bicubic and every SR model on Set5/Set14, beside the paper's"),
    "style": (style, "each style network against Gatys et al. at 50/100/300 iterations"),
    "style-weight": (style_weight, "the rule of --style-weight auto on every painting"),
    "speed": (speed, "the paper's Table 1 on this machine: optimisation vs forward pass"),
    "gallery": (gallery, "docs/gallery: every style on the content images, SR crops"),
    "learned": (learned, "the paintings no model covers, learned as the service learns them, "
                         "against per-style networks and Gatys et al. (hours on a CPU)"),
    "readme": (readme, "rewrite README.md's generated blocks from docs/*.json"),
}


def add_measurement_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """What the measuring commands read (models, data) and their own knobs."""
    p.add_argument("--store", default=str(SHIPPED_ROOT), help="model store folder")
    p.add_argument("--data", default=str(data_root()), help="the shared data folder")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    if name == "sr":
        p.add_argument("--datasets", default="Set5,Set14", help="folders under DATA/sr")
    if name == "style":
        p.add_argument("--models", default="", help="comma-separated styles (default: all)")
        p.add_argument("--content", default="chicago",
                       help="content images compared with Gatys (comma-separated stems)")
        p.add_argument("--size", type=int, default=256, help="longer side of the images")
        p.add_argument("--iterations", default="50,100,300", help="Gatys reports")
        p.add_argument("--init", choices=("noise", "content"), default="noise",
                       help="Gatys' starting image (the paper: noise)")
        p.add_argument("--gate-iterations", type=int, default=100,
                       help="ship only if the network's total loss is at most Gatys et al.'s "
                            "after this many iterations on every content image")
        p.add_argument("--runs", type=int, default=5, help="forward passes timed")
    if name == "style-weight":
        p.add_argument("--image-size", type=int, default=256,
                       help="the photos' short side and the paintings' longer side")
        p.add_argument("--check-size", type=int, default=128,
                       help="side of the photo crop Gatys et al. style in the check")
    if name == "speed":
        p.add_argument("--model", default="", help="style model timed (default: first)")
        p.add_argument("--sizes", default="256,512,1024", help="square image sides")
        p.add_argument("--iterations", default="100,300,500", help="Gatys totals reported")
        p.add_argument("--measure", default="256:100,512:5,1024:3",
                       help="SIZE:N iterations actually run per size; more are extrapolated")
        p.add_argument("--runs", type=int, default=5, help="forward passes timed")
    if name == "learned":
        p.add_argument("--work", default="runs/learned",
                       help="where the networks and checkpoints are kept between runs")
        p.add_argument("--paintings", default="", help="comma-separated stems (default: all)")
        p.add_argument("--content", default="chicago", help="content images (stems)")
        p.add_argument("--size", type=int, default=256, help="longer side of the images")
        p.add_argument("--gatys-iterations", type=int, default=100)
        p.add_argument("--network-iterations", type=int, default=2000,
                       help="steps of each per-style network (the paper: 40,000 on a GPU)")
        p.add_argument("--crop-size", type=int, default=128,
                       help="the per-style networks' training crops")
        p.add_argument("--learn-time-limit-s", type=float, default=450.0,
                       help="training time of each learned style (the service's default)")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    if name == "gallery":
        p.add_argument("--photos", default="kodak24/kodim03.jpg,kodak24/kodim21.jpg,"
                       "kodak24/kodim23.jpg", help="extra photos, relative to DATA/photos")
        p.add_argument("--size", type=int, default=320, help="shorter side of the pictures")
        p.add_argument("--sr-images", default="Set5/butterfly,Set5/bird,Set14/zebra,"
                       "Set14/comic", help="SR crops: DATA/sr/<set>/<stem>")
        p.add_argument("--crop", type=int, default=96, help="side of the SR crops (HR px)")
        p.add_argument("--zoom", type=int, default=2, help="nearest-neighbour zoom of crops")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m report", description=__doc__)
    sub = parser.add_subparsers(dest="report", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--docs", default=str(DOCS), help="output folder")
        if name == "readme":
            p.add_argument("--readme", default=str(README), help="README to update")
            p.add_argument("--pages", action=argparse.BooleanOptionalAction, default=True,
                           help="also rewrite docs/*.md and plots from the JSON")
            p.add_argument("--bench-results", default=str(bench_summary.RESULTS),
                           help="the benchmarks' JSON, quoted in the bench block")
        else:
            add_measurement_arguments(p, name)
        p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, StoreError) as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
