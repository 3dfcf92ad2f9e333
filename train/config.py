"""Training configurations: one frozen dataclass per task, the paper's settings as defaults.

The CLI is generated from these fields (their `help` metadata; a `Literal` field becomes a
`choices=` flag), and `asdict(cfg)` is stored verbatim in each model's manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from model_store import data_root
from nets.layers import Norm, Padding, Upsample
from train.degrade import Degradation

Amp = Literal["auto", "bf16", "fp16", "none"]
SaveDtype = Literal["float16", "float32"]
SuperResLoss = Literal["feat", "pixel"]
Weight = float | Literal["auto"]    # a loss weight, or chosen by a measured rule


def weight(text: str) -> Weight:
    """A `Weight` flag's value: `auto` or a float (argparse names the flag on a ValueError)."""
    return "auto" if text == "auto" else float(text)


def opt(default, help: str, aliases: tuple[str, ...] = ()):  # noqa: A002 - reads like argparse
    return field(default=default, metadata={"help": help, "aliases": aliases})


@dataclass(frozen=True)
class TrainConfig:
    data: str = opt(str(data_root() / "photos"), "folder of training photos (searched recursively)")
    name: str = opt("", "model name in the store (default: derived from the task)")
    store: str = opt("model_store", "model store folder the trained network is written to")
    iterations: int = opt(40_000, "optimisation steps (the paper: 40k for style)",
                          aliases=("--max-iters",))
    batch_size: int = opt(4, "images per step (the paper: 4)")
    lr: float = opt(1e-3, "Adam learning rate (the paper: 1e-3)")
    lr_decay: bool = opt(False, "lower the rate linearly to zero over the run (its steps, or "
                                "its time limit if that ends first); the paper keeps it")
    seed: int = opt(0, "seed of initialisation and data sampling")
    norm: Norm = opt("batch", "normalisation layers (the paper: batch)")
    upsample: Upsample = opt("transposed", "upsampling (the paper: transposed)")
    padding: Padding = opt("zero", "convolution padding (the paper: zero)")
    tv_weight: float = opt(1e-6, "lambda_TV of the total variation regulariser")
    device: str = opt("auto", "auto, cpu or cuda")
    amp: Amp = opt("auto", "autocast dtype; auto: bf16 where the hardware runs it natively")
    time_limit_s: float = opt(0.0, "stop after this many seconds and save (0 = no limit)")
    checkpoint_every: int = opt(1000, "write a resumable checkpoint every N steps")
    checkpoint_dir: str = opt("runs", "folder for resumable checkpoints")
    resume: bool = opt(False, "continue from the checkpoint of this model name")
    init_from: str = opt("", "start from the weights of this model in --store (fine-tuning)")
    vgg_weights: str = opt("", "converted VGG safetensors (default: find VGG-16/VGG-19 on disk)")
    save_dtype: SaveDtype = opt("float16", "dtype of the stored weights")
    progress_json: bool = opt(False, "print a JSON line of progress (step, iterations, losses, "
                                     "seconds) every 25 steps, for a program that runs training "
                                     "as a job")


@dataclass(frozen=True)
class StyleConfig(TrainConfig):
    style_image: str = opt(str(data_root() / "styles" / "udnie.jpg"), "the style painting y_s")
    image_size: int = opt(256, "short side the photos are scaled to, and the side of the square "
                               "training crops unless --crop-size (the paper: 256)")
    crop_size: int = opt(0, "side of the training crops cut from the scaled photos (0 = "
                            "image_size): 128 keeps the scale of 256 at a quarter of the cost")
    style_size: int = opt(0, "longer side the style image is resized to (0 = image_size)")
    content_weight: float = opt(1.0, "lambda_c of the relu2_2 feature reconstruction loss")
    style_weight: Weight = opt("auto", "lambda_s of the style reconstruction loss; auto: "
                                       "chosen by the rule of train/style_weight.py")
    content_layer: str = opt("relu2_2", "feature reconstruction layer (the paper: relu2_2)")
    style_layers: str = opt("relu1_2,relu2_2,relu3_3,relu4_3", "style reconstruction layers")

    def __post_init__(self) -> None:
        if self.crop_size > self.image_size:
            raise ValueError(f"--crop-size {self.crop_size} is larger than the photos, scaled "
                             f"to --image-size {self.image_size}")


@dataclass(frozen=True)
class SuperResConfig(TrainConfig):
    factor: int = opt(4, "upsampling factor: 4 or 8")
    loss: SuperResLoss = opt("feat", "relu2_2 feature reconstruction (feat, the paper) or pixel")
    patch_size: int = opt(288, "side of the high-resolution training patches (the paper: 288)",
                          aliases=("--image-size",))
    feature_layer: str = opt("relu2_2", "layer of the feature reconstruction loss")
    residual: bool = opt(False, "predict a correction to bicubic upsampling (not in the paper)")
    degradation: Degradation = opt(
        "bicubic", "how the low-resolution inputs are made (train/degrade.py): bicubic "
                   "(antialiased, as `train eval` and users make them) or paper (blur, then "
                   "bicubic without antialiasing)")
    blur_sigma: float = opt(1.0, "Gaussian blur of --degradation paper (the paper: 1.0)")


@dataclass(frozen=True)
class MultiStyleConfig(StyleConfig):
    styles: str = opt("udnie,candy,mosaic,rain_princess,starry_night,the_wave",
                      "comma-separated style names, one painting <style-dir>/<name>.jpg each")
    style_dir: str = opt(str(data_root() / "styles"), "folder of the style paintings")
    style_weights: str = opt("", "comma list of lambda_s per style (default: --style-weight)")
    teachers: str = opt("", "store of per-style networks to distil from instead of the "
                        "perceptual losses (a pixel loss against the teacher's output)")
    add_style: str = opt("", "a painting to learn as one more style of the multi-style "
                             "network --init-from (default multistyle), named --name (default "
                             "the file's name): only its scale and shift train, every shared "
                             "weight is frozen (Dumoulin et al. 2017); the network is written "
                             "back under its own name")
    add_style_lr: float = opt(1e-2, "Adam learning rate of --add-style, in place of --lr, "
                                    "decayed (--lr-decay): only a few thousand scale and shift "
                                    "parameters train (measured: after 50 steps at 1e-2 the "
                                    "style loss is below 1e-3's after 200)")
    replace: bool = opt(False, "with --add-style: learn the style --name again when the "
                               "network has it (its old scale and shift are dropped)")


C = TypeVar("C", bound=TrainConfig)


def add_arguments(parser: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    """One `--flag` per dataclass field, with the field's default and help; a `Literal` field
    takes only its values (argparse names them in the error for any other)."""
    hints = typing.get_type_hints(cls)  # the annotations are strings (`from __future__`)
    for f in dataclasses.fields(cls):
        flags = ["--" + f.name.replace("_", "-"), *f.metadata["aliases"]]
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=f.metadata["help"])
        elif kind == Weight:
            parser.add_argument(*flags, dest=f.name, type=weight, default=f.default,
                                help=f.metadata["help"])
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(*flags, dest=f.name, choices=typing.get_args(kind),
                                default=f.default, help=f.metadata["help"])
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=f.default,
                                help=f.metadata["help"])


def from_args(cls: type[C], args: argparse.Namespace) -> C:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
