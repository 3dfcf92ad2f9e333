"""The quality gate a new model version passes before it takes traffic (`Registry.reload`), on
small images drawn here (`probe_images`: shapes, lines, text over smooth colour, nothing read
from disk):

- super-resolution: the images shrunk as users shrink photos (antialiased bicubic), the
  network's upscaling must be closer to them than bicubic upscaling: a higher PSNR on Y, over
  the set;
- style: on every image the network must move the texture statistics at least half-way to its
  painting's (kept with the model, `model_store.PAINTING`): the ship gate's rule, style loss at
  most 0.5x the unstyled input's. The statistics are Gram matrices, as in the paper's style
  loss, of the colours and luminance derivatives at three scales: the service carries no VGG.
  A multi-style network is checked on each style whose painting the store keeps; a style
  without one skips this gate.

Measured on the shipped models (tests/service/test_service_quality.py): every one passes; an
untrained network, or a style network against another's painting, does not.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

STYLE_RATIO = 0.5      # the ship gate: at most this much of the unstyled input's distance
PROBES = 4


@dataclass(frozen=True)
class Verdict:
    """A gate's answer and the figures it stands on (kept with a learned style's manifest)."""

    problem: str | None = None          # why the model fails; None: it passes
    figures: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def probe_images(side: int, count: int = PROBES) -> tuple[np.ndarray, ...]:
    """`count` deterministic (side, side, 3) uint8 images with what photographs have and a
    network can get wrong: smooth colour, hard edges, thin lines, text. Drawn once per size
    (a reload under load should not hold the interpreter drawing them again); read-only."""
    font = ImageFont.load_default(size=14)
    out = []
    for seed in range(count):
        rng = np.random.default_rng(seed)

        def colour(rng: np.random.Generator = rng) -> tuple[int, ...]:
            return tuple(int(v) for v in rng.integers(0, 256, 3))

        im = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize(
            (side, side), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(im)
        for _ in range(10):
            x, y = (int(v) for v in rng.integers(0, side, 2))
            w, h = (int(v) for v in rng.integers(side // 20, side // 2, 2))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x, y, x + w, y + h], fill=colour())
        for _ in range(8):
            ends = [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(2)]
            draw.line(ends, fill=colour(), width=int(rng.integers(1, 4)))
        for _ in range(3):
            draw.text((int(rng.integers(0, side - 90)), int(rng.integers(0, side - 16))),
                      "Perceptual 2016", fill=colour(), font=font)
        out.append(np.asarray(im))
    return tuple(out)


def _tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def _run(model, x: torch.Tensor, style: int | None = None  # noqa: ANN001 - LoadedModel
         ) -> torch.Tensor:
    """The network's output in [0, 1], float32 on the CPU, one image at a time; `style`: the
    index of a multi-style network's style."""
    mix = None
    if style is not None:
        mix = torch.zeros(1, len(model.styles), device=model.device)
        mix[0, style] = 1
    with torch.inference_mode():
        return torch.cat([model.run_module(xi[None].to(model.device, model.dtype), mix)
                          .float().cpu() for xi in x]).clamp(0, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Y of ITU-R BT.601 (16..235) of images in [0, 1], as super-resolution papers measure."""
    weights = torch.tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return 16 + (x * weights).sum(1)


def _psnr(a: torch.Tensor, b: torch.Tensor, border: int) -> float:
    """PSNR on Y of images in [0, 1], without `border` pixels at each side."""
    ya, yb = (_luma(t)[:, border:-border, border:-border] for t in (a, b))
    return float(10 * torch.log10(255 ** 2 / ((ya - yb) ** 2).mean()))


def superres_gate(model) -> Verdict:  # noqa: ANN001 - registry.LoadedModel
    """Whether `model` upscales the probes better than bicubic upscaling."""
    f = model.factor
    side = 32 * f
    hr = probe_images(side)
    lr = [np.asarray(Image.fromarray(im).resize((side // f, side // f),
                                                Image.Resampling.BICUBIC)) for im in hr]
    bicubic = [np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.BICUBIC))
               for im in lr]
    target = _tensor(hr)
    net = _psnr((_run(model, _tensor(lr)) * 255).round() / 255, target, f)   # as encoded
    base = _psnr(_tensor(bicubic), target, f)
    figures = {"psnr_y_db": round(net, 2), "bicubic_psnr_y_db": round(base, 2)}
    if net <= base:
        return Verdict(f"on the probe images it upscales x{f} worse than bicubic: PSNR-Y "
                       f"{net:.2f} dB against {base:.2f}", figures)
    return Verdict(None, figures)


def _grams(x: torch.Tensor) -> list[torch.Tensor]:
    """Per scale (1, 1/2, 1/4), the Gram matrices of [R, G, B, dY/dx, dY/dy], (N, 5, 5)."""
    grams = []
    for scale in range(3):
        if scale:
            x = F.avg_pool2d(x, 2)
        y = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        dx = (y[..., :-1, 1:] - y[..., :-1, :-1]) * 4   # derivatives weigh like colours
        dy = (y[..., 1:, :-1] - y[..., :-1, :-1]) * 4
        features = torch.cat([x[..., :-1, :-1], dx, dy], 1).flatten(2)
        grams.append(features @ features.transpose(1, 2) / features.shape[-1])
    return grams


def _distance(x: torch.Tensor, target: list[torch.Tensor]) -> torch.Tensor:
    """Per image, the squared distance of its statistics to the painting's, (N,)."""
    return torch.stack([((g - t) ** 2).sum((1, 2))
                        for g, t in zip(_grams(x), target, strict=True)]).sum(0)


def style_ratios(forward: Callable[[torch.Tensor], torch.Tensor], painting: bytes
                 ) -> list[float]:
    """Per probe image, the distance of `forward`'s output (images in [0, 1] in and out) to
    the painting's texture statistics over the input's: 0 is the painting's, 1 no change."""
    with Image.open(io.BytesIO(painting)) as im:
        target = _grams(_tensor([np.asarray(im.convert("RGB"))]))
    x = _tensor(probe_images(192))
    return (_distance(forward(x), target) / _distance(x, target)).tolist()


def style_gate(model, painting: bytes,  # noqa: ANN001 - registry.LoadedModel
               style: int | None = None) -> Verdict:
    """Whether `model`'s outputs (of its style number `style`, on a multi-style network) are
    close enough to its painting's statistics; the figure is the worst probe's ratio."""
    worst = max(style_ratios(lambda x: _run(model, x, style), painting))
    figures = {"texture_ratio": round(worst, 3), "at_most": STYLE_RATIO}
    if worst > STYLE_RATIO:
        return Verdict(f"on the probe images its outputs are not like its painting: the "
                       f"texture statistics keep {worst:.2f} of the input's distance to it (at "
                       f"most {STYLE_RATIO} passes)", figures)
    return Verdict(None, figures)


def check(model, paintings: dict[str, bytes]) -> Verdict:  # noqa: ANN001 - LoadedModel
    """`model` through its task's gate. `paintings`: by style name, those the store keeps (a
    single-style network's under its own name); the figures of a style network are by style."""
    if model.task == "superres":
        return superres_gate(model)
    figures: dict[str, Any] = {}
    for style, painting in paintings.items():
        index = model.styles.index(style) if model.styles else None
        verdict = style_gate(model, painting, index)
        figures[style] = verdict.figures
        if verdict.problem is not None:
            problem = f"style {style}: {verdict.problem}" if model.styles else verdict.problem
            return Verdict(problem, figures)
    return Verdict(None, figures)
