"""Style options: strength (pixel-space blend) and preserve_color (luminance-only transfer)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.imaging import mix_style
from tests.helpers import images
from tests.helpers.server import Running

on_module_loop = pytest.mark.asyncio(loop_scope="module")   # the app fixture's loop
PNG = {"content-type": "image/png"}

# YIQ (Gatys et al. 2016 use it for luminance-only transfer); rows: Y, I, Q.
YIQ = np.array([[0.299, 0.587, 0.114],
                [0.596, -0.274, -0.322],
                [0.211, -0.523, 0.312]], np.float32)


def yiq(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ YIQ.T


async def stylize(api: Running, data: bytes, query: str = "") -> tuple[np.ndarray, str]:
    resp = await api.client.post(f"/v1/stylize?style=candy{query}", content=data, headers=PNG)
    assert resp.status_code == 200, resp.text
    return np.asarray(images.decode(resp.content)), resp.headers["x-cache"]


# -- the mixing function ------------------------------------------------------------------------


def test_strength_blends_in_pixel_space() -> None:
    content = images.pixels(40, 30, seed=1)
    stylised = images.pixels(40, 30, seed=2)
    assert np.array_equal(mix_style(content, stylised, strength=0.0), content)
    assert np.array_equal(mix_style(content, stylised, strength=1.0), stylised)
    half = mix_style(content, stylised, strength=0.5).astype(np.float32)
    expected = (content.astype(np.float32) + stylised) / 2
    assert np.abs(half - expected).max() <= 0.5 + 1e-3


def test_preserve_color_keeps_the_input_chroma_and_the_output_luminance() -> None:
    content = images.pixels(64, 48, seed=3)
    # A stylised image of a different hue and contrast: pure luminance changes are not enough.
    stylised = np.clip(images.pixels(64, 48, seed=4)[..., ::-1] * 0.8 + 30, 0, 255).astype(np.uint8)
    out = mix_style(content, stylised, preserve_color=True)
    got, want_y, want_iq = yiq(out), yiq(stylised)[..., 0], yiq(content)[..., 1:]
    unclipped = (out > 0).all(-1) & (out < 255).all(-1)   # clipping to 0..255 alters chroma
    assert unclipped.mean() > 0.8
    assert np.abs(got[..., 0] - want_y)[unclipped].max() <= 1.0
    assert np.abs(got[..., 1:] - want_iq)[unclipped].max() <= 1.5
    # and it really changed the colours back: the stylised chroma is far from the input's
    assert np.abs(yiq(stylised)[..., 1:] - want_iq).mean() > 10


def test_preserve_color_with_strength_scales_the_luminance_change() -> None:
    content = images.pixels(32, 32, seed=5)
    stylised = images.pixels(32, 32, seed=6)
    out = mix_style(content, stylised, strength=0.25, preserve_color=True)
    dy = yiq(out)[..., 0] - yiq(content)[..., 0]
    want = 0.25 * (yiq(stylised)[..., 0] - yiq(content)[..., 0])
    unclipped = (out > 0).all(-1) & (out < 255).all(-1)
    assert np.abs(dy - want)[unclipped].max() <= 1.0


# -- through HTTP -------------------------------------------------------------------------------


@on_module_loop
async def test_strength_zero_one_and_between(api: Running) -> None:
    data = images.png(40, 24, seed=11)
    content = np.asarray(images.decode(data).convert("RGB"))
    full, _ = await stylize(api, data)
    same, _ = await stylize(api, data, "&strength=1")
    assert np.array_equal(full, same)
    none, _ = await stylize(api, data, "&strength=0")
    assert np.array_equal(none, content)
    half, _ = await stylize(api, data, "&strength=0.5")
    expected = (content.astype(np.float32) + full) / 2
    assert np.abs(half - expected).max() <= 0.5 + 1e-3


@on_module_loop
async def test_preserve_color_over_http(api: Running) -> None:
    data = images.png(40, 24, seed=12)
    content = np.asarray(images.decode(data).convert("RGB"))
    full, _ = await stylize(api, data)
    kept, _ = await stylize(api, data, "&preserve_color=true")
    assert np.array_equal(kept, mix_style(content, full, preserve_color=True))
    assert not np.array_equal(kept, full)


@on_module_loop
async def test_options_are_part_of_the_cache_key(api: Running) -> None:
    data = images.png(36, 20, seed=13)
    seen = [(await stylize(api, data, q))[1] for q in (
        "", "", "&strength=0.5", "&strength=0.5", "&preserve_color=true",
        "&strength=0.5&preserve_color=true", "&strength=0.5&preserve_color=1")]
    assert seen == ["miss", "hit", "miss", "hit", "miss", "miss", "hit"]


@on_module_loop
@pytest.mark.parametrize("query", [
    "strength=-0.1", "strength=1.01", "strength=nan", "strength=inf", "strength=abc",
    "strength=", "preserve_color=maybe", "preserve_color=2"])
async def test_invalid_options_are_422_with_the_envelope(api: Running, query: str) -> None:
    resp = await api.client.post(f"/v1/stylize?style=candy&{query}",
                                 content=images.png(16, 16), headers=PNG)
    assert resp.status_code == 422, (query, resp.text)
    error = resp.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert query.split("=")[0] in error["message"]


@on_module_loop
async def test_superres_has_no_style_options(api: Running) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    names = {p["name"] for p in spec["paths"]["/v1/superres"]["post"]["parameters"]}
    assert not names & {"strength", "preserve_color"}
    stylize_params = {p["name"]: p for p in spec["paths"]["/v1/stylize"]["post"]["parameters"]}
    schema = stylize_params["strength"]["schema"]
    assert (schema["minimum"], schema["maximum"], schema["default"]) == (0, 1, 1.0)
    assert math.isclose(schema["default"], 1.0)
