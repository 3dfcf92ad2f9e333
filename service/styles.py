"""The `style` parameter: one style or a blend, and which network answers it.

Syntax: `name` or `name:weight,name:weight,...` (a weight left out counts 1). Weights are
non-negative, normalised to sum to 1 and rounded to `WEIGHT_DECIMALS` places, so `a:2,b:2` and
`a:1,b:1` are the same request (one cache entry). A style whose weight is 0 is checked, then
dropped.

Which network: a blend (two or more styles with weight) needs one multi-style network
(`nets/multistyle_net.py`) that holds every style named, and mixes their normalisation
parameters. One style goes to its own network or to a multi-style network holding it, as the
`style_backend` setting prefers ("single" or "multi"), falling back to the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from service import errors
from service.registry import LoadedModel, Registry

WEIGHT_DECIMALS = 4      # normalised weights are rounded so (cache key and forward pass alike)
MAX_NAME_CHARS = 64      # as model_store names
Backend = Literal["single", "multi"]


@dataclass(frozen=True)
class StyleChoice:
    """The network for a `style` request, and its row of style weights when it has styles."""

    model: LoadedModel
    mix: tuple[float, ...] | None     # over model.styles; None for a single-style network


def parse(text: str, max_styles: int) -> dict[str, float]:
    """`text` -> {name: weight}, weights normalised to sum to 1 and rounded; 422 if malformed.
    Names are not checked against the models here."""
    raw: dict[str, float] = {}
    parts = text.split(",")
    if len(parts) > max_styles:
        raise errors.InvalidParameter(f"the style parameter names {len(parts)} styles; at most "
                                      f"{max_styles} can be blended")
    for part in parts:
        name, colon, weight = (s.strip() for s in part.partition(":"))
        if not name:
            raise errors.InvalidParameter(f"style {text!r} has an empty name; use name or "
                                          f"name:weight,name:weight")
        if len(name) > MAX_NAME_CHARS:
            raise errors.InvalidParameter(f"a style name is at most {MAX_NAME_CHARS} "
                                          f"characters; {name[:16]!r}... has {len(name)}")
        if name in raw:
            raise errors.InvalidParameter(f"style {name!r} is named twice")
        raw[name] = _weight(name, weight) if colon else 1.0
    total = sum(raw.values())
    if total <= 0:
        raise errors.InvalidParameter("the style weights are all zero; give at least one a "
                                      "positive weight")
    if not math.isfinite(total):
        raise errors.InvalidParameter("the style weights are too large to add up")
    return {name: round(w / total, WEIGHT_DECIMALS) for name, w in raw.items()}


def _weight(name: str, text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise errors.InvalidParameter(f"style {name!r}: weight {text!r} is not a number") from None
    if not math.isfinite(weight):
        raise errors.InvalidParameter(f"style {name!r}: weight {text!r} is not finite")
    if weight < 0:
        raise errors.InvalidParameter(f"style {name!r}: weight {text!r} is negative")
    return weight


def choose(registry: Registry, weights: dict[str, float], backend: Backend) -> StyleChoice:
    """The network for normalised `weights` (see the module docstring); 404 for an unknown
    style, 400 for a blend no one network holds."""
    available = registry.styles()
    unknown = [name for name in weights if name not in available]
    if unknown:
        raise errors.UnknownModel(f"unknown style {unknown[0]!r}; available: "
                                  f"{', '.join(available) or 'none'}")
    used = {name: w for name, w in weights.items() if w > 0}
    if not used:     # every weight rounded to 0: only with thousands of names
        raise errors.InvalidParameter("the style weights are all zero after rounding")
    multi = [m for m in registry.multistyle() if set(used) <= set(m.styles)]
    if len(used) == 1:
        (name,) = used
        single = registry.get(name)
        single = single if single is not None and single.task == "style" \
            and not single.styles else None
        options = [single, *multi] if backend == "single" else [*multi, single]
        model = next(m for m in options if m is not None)
    elif multi:
        model = multi[0]
    else:
        raise errors.CannotBlend(
            f"blending {', '.join(sorted(used))} needs one multi-style network holding all "
            f"of them, and none does; {_blendable(registry.multistyle())}")
    mix = tuple(used.get(s, 0.0) for s in model.styles) if model.styles else None
    return StyleChoice(model, mix)


def _blendable(models: Sequence[LoadedModel]) -> str:
    if not models:
        return "no multi-style network is loaded, so no styles can be blended"
    return "styles that can be blended: " + "; ".join(
        f"{', '.join(m.styles)} (network {m.name})" for m in models)
