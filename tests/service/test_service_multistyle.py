"""The multi-style network in the service: one style, blends (`style=a:0.7,b:0.3`), different
styles in one forward pass, the choice between it and the single-style networks, the parsing
of `style`, and tiles. Outputs are checked against the network run directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import pytest_asyncio
import torch
from torch import nn

from model_store import ModelStore
from nets.multistyle_net import MultiStyleNet
from nets.style_net import StyleNet
from service import errors, execution, styles
from service.imaging import mix_style
from service.registry import Registry
from service.settings import Settings
from service.tiling import ImageNorm, run_tiled
from tests.helpers import images
from tests.helpers.models import MULTISTYLE_OPTIONS, hold, make_multistyle_store
from tests.helpers.server import Running, running, until

on_module_loop = pytest.mark.asyncio(loop_scope="module")   # the app fixture's loop
PNG = {"content-type": "image/png"}
STYLES = ("candy", "mosaic", "udnie")     # the multi-style network's, in its order


@pytest.fixture(scope="module")
def ms_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """multistyle (candy, mosaic, udnie) + single-style candy and wave."""
    root = tmp_path_factory.mktemp("multistyle-store")
    make_multistyle_store(root, STYLES, singles=("candy", "wave"))
    return root


def ms_settings(root: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        model_store=root, device="cpu", dtype="float32", redis_url=None, max_wait_ms=1,
        max_pixels=1_000_000, max_blend_styles=3, drain_timeout_s=10)
    values.update(overrides)
    return Settings(**values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(ms_root: Path) -> AsyncIterator[Running]:
    async with running(ms_settings(ms_root)) as r:
        yield r


@pytest.fixture(scope="module")
def direct(ms_root: Path) -> Callable[..., np.ndarray]:
    """(model name, image bytes or pixels, mix row or None) -> the network's uint8 output,
    computed here in float32 without the service."""
    nets = networks(ms_root)

    def run(name: str, image: bytes | np.ndarray, mix: list[float] | None = None) -> np.ndarray:
        return direct_net(nets[name], image if isinstance(image, np.ndarray) else pixels(image),
                          mix)

    return run


def direct_net(net: nn.Module, rgb: np.ndarray, mix: list[float] | None = None) -> np.ndarray:
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = net(x) if mix is None else net(x, torch.tensor([mix], dtype=torch.float32))
    return (y.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def networks(root: Path) -> dict[str, nn.Module]:
    store = ModelStore(root)
    return {name: store.load(name)[0] for name in ("multistyle", "candy")}


def as_single_style(net: MultiStyleNet, row: list[float]) -> StyleNet:
    """The StyleNet that a multi-style network is for one row of weights: the same
    convolutions, instance-norm scale and shift = the row's mix of the styles' ones."""
    single = StyleNet(norm="instance", **MULTISTYLE_OPTIONS).eval()  # type: ignore[arg-type]
    mixed, mix = net.state_dict(), torch.tensor(row)
    state = {}
    for key in single.state_dict():
        base, kind = key.rsplit(".", 1)
        state[key] = mixed[key] if key in mixed else \
            mix @ mixed[f"{base}.{'scale' if kind == 'weight' else 'shift'}"]
    single.load_state_dict(state)
    return single


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(images.decode(data).convert("RGB"))


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.abs(a.astype(int) - b.astype(int))


async def stylize(api: Running, data: bytes, style: str, query: str = "") -> np.ndarray:
    resp = await api.client.post(f"/v1/stylize?style={style}{query}", content=data, headers=PNG)
    assert resp.status_code == 200, resp.text
    return pixels(resp.content)


# -- parsing `style` ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "weights"), [
    ("candy", {"candy": 1.0}),
    ("candy:0.7,udnie:0.3", {"candy": 0.7, "udnie": 0.3}),
    ("candy:2,udnie:2", {"candy": 0.5, "udnie": 0.5}),
    (" candy : 3 , udnie", {"candy": 0.75, "udnie": 0.25}),   # a weight left out counts 1
    ("candy:1,udnie:0", {"candy": 1.0, "udnie": 0.0}),
    ("a:1,b:1,c:1", {"a": 0.3333, "b": 0.3333, "c": 0.3333}),
])
def test_parse_normalises_and_rounds_the_weights(text: str, weights: dict[str, float]) -> None:
    assert styles.parse(text, max_styles=3) == weights


@pytest.mark.parametrize(("text", "problem"), [
    ("candy:abc", "not a number"), ("candy:-0.5,udnie:1", "negative"),
    ("candy:0,udnie:0", "all zero"), ("candy,candy:2", "named twice"),
    ("a,b,c,d", "at most 3"), (":0.5", "empty name"), ("candy,", "empty name"),
    ("a" * 65, "at most 64 characters"), ("candy:nan", "not finite"),
    ("candy:inf", "not finite"), ("candy:1e308,udnie:1e308", "large"),
])
def test_parse_refuses_malformed_values(text: str, problem: str) -> None:
    with pytest.raises(errors.InvalidParameter, match=problem):
        styles.parse(text, max_styles=3)


# -- the service --------------------------------------------------------------------------------


@on_module_loop
async def test_models_list_the_multistyle_network_and_its_styles(api: Running) -> None:
    models = {m["name"]: m for m in (await api.client.get("/v1/models")).json()["models"]}
    assert set(models) == {"multistyle", "candy", "wave"}
    assert models["multistyle"]["styles"] == list(STYLES)
    assert models["multistyle"]["task"] == "style"
    assert models["candy"]["styles"] == []
    assert api.services.registry.styles() == ["candy", "mosaic", "udnie", "wave"]
    schema = (await api.client.get("/openapi.json")).json()
    params = schema["paths"]["/v1/stylize"]["post"]["parameters"]
    (style,) = [p for p in params if p["name"] == "style"]
    assert "name:weight,name:weight" in style["description"]
    assert "styles" in schema["components"]["schemas"]["ModelInfo"]["properties"]


@on_module_loop
async def test_blend_equals_the_network_with_the_mixed_weights(api: Running, direct) -> None:  # noqa: ANN001
    data = images.png(40, 32, seed=1)
    blend = await stylize(api, data, "candy:0.7,udnie:0.3")
    assert diff(blend, direct("multistyle", data, [0.7, 0.0, 0.3])).max() <= 1
    # and the blend is neither style alone
    assert diff(blend, direct("multistyle", data, [1.0, 0.0, 0.0])).mean() > 3
    assert diff(blend, direct("multistyle", data, [0.0, 0.0, 1.0])).mean() > 3


@on_module_loop
async def test_one_style_of_the_multistyle_network_is_its_one_hot_row(api: Running,
                                                                      direct) -> None:  # noqa: ANN001
    data = images.png(36, 28, seed=2)
    for i, name in enumerate(("mosaic", "udnie")):    # no single-style network of their own
        one_hot = [0.0] * 3
        one_hot[STYLES.index(name)] = 1.0
        out = await stylize(api, data, name)
        assert diff(out, direct("multistyle", data, one_hot)).max() <= 1, (i, name)
    # a zero weight drops the style: candy:0 leaves udnie alone, on the multi-style network
    zero = await stylize(api, data, "candy:0,udnie:5")
    assert diff(zero, direct("multistyle", data, [0.0, 0.0, 1.0])).max() <= 1


@on_module_loop
async def test_equal_blends_share_one_cache_entry(api: Running) -> None:
    data = images.png(32, 32, seed=3)
    first = await api.client.post("/v1/stylize?style=candy:2,udnie:2", content=data, headers=PNG)
    again = await api.client.post("/v1/stylize?style=udnie:1,candy:1", content=data, headers=PNG)
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit"
    assert again.content == first.content
    other = await api.client.post("/v1/stylize?style=candy:1,udnie:2", content=data, headers=PNG)
    assert other.headers["x-cache"] == "miss" and other.content != first.content


@on_module_loop
async def test_strength_and_preserve_color_apply_to_blends(api: Running) -> None:
    data = images.png(40, 40, seed=4)
    content = pixels(data)
    blend = await stylize(api, data, "mosaic:1,udnie:1")
    half = await stylize(api, data, "mosaic:1,udnie:1", "&strength=0.5")
    assert diff(half, mix_style(content, blend, strength=0.5)).max() <= 1
    assert diff(half, blend).mean() > 3
    kept = await stylize(api, data, "mosaic:1,udnie:1", "&preserve_color=true")
    assert diff(kept, mix_style(content, blend, preserve_color=True)).max() <= 1
    assert diff(await stylize(api, data, "mosaic:1,udnie:1", "&strength=0"), content).max() == 0


@on_module_loop
async def test_one_style_prefers_its_own_network(api: Running, direct) -> None:  # noqa: ANN001
    data = images.png(32, 24, seed=5)
    out = await stylize(api, data, "candy")
    assert diff(out, direct("candy", data)).max() <= 1
    assert diff(out, direct("multistyle", data, [1.0, 0.0, 0.0])).mean() > 3
    served = await api.metric("service_request_duration_seconds_count", model="candy")
    assert served >= 1


async def test_style_backend_multi_sends_one_style_to_the_multistyle_network(
        ms_root: Path, direct) -> None:  # noqa: ANN001
    data = images.png(32, 24, seed=5)
    async with running(ms_settings(ms_root, style_backend="multi")) as r:
        out = await stylize(r, data, "candy")
        assert diff(out, direct("multistyle", data, [1.0, 0.0, 0.0])).max() <= 1
        wave = await stylize(r, data, "wave")        # held by no multi-style network: its own
        assert wave.shape == (24, 32, 3)
        assert await r.metric("service_batch_size_count", model="candy") == 0
        assert await r.metric("service_batch_size_count", model="wave") == 1


@on_module_loop
@pytest.mark.parametrize(("style", "status", "code", "words"), [
    ("candy:abc", 422, "invalid_parameter", ["'abc' is not a number"]),
    ("candy:-1,udnie:1", 422, "invalid_parameter", ["negative"]),
    ("candy:0,udnie:0", 422, "invalid_parameter", ["all zero"]),
    ("udnie,udnie", 422, "invalid_parameter", ["named twice"]),
    ("candy,mosaic,udnie,wave", 422, "invalid_parameter", ["at most 3"]),
    ("candy:,udnie", 422, "invalid_parameter", ["not a number"]),
    ("candy:inf", 422, "invalid_parameter", ["not finite"]),
    (",", 422, "invalid_parameter", ["empty name"]),
    ("nosuch", 404, "unknown_model", ["candy, mosaic, udnie, wave"]),
    ("candy:1,nosuch:0", 404, "unknown_model", ["'nosuch'"]),
    ("multistyle", 404, "unknown_model", ["available: candy, mosaic, udnie, wave"]),
    ("candy:0.5,wave:0.5", 400, "cannot_blend",
     ["candy, wave", "one multi-style network", "candy, mosaic, udnie (network multistyle)"]),
])
async def test_bad_style_values_get_clear_errors(api: Running, style: str, status: int,
                                                 code: str, words: list[str]) -> None:
    resp = await api.client.post("/v1/stylize", params={"style": style},
                                 content=images.png(seed=6), headers=PNG)
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code
    for word in words:
        assert word in body["message"], body["message"]


async def test_different_styles_share_one_forward_pass(ms_root: Path, direct) -> None:  # noqa: ANN001
    inputs = [images.png(40, 24, seed=10 + i) for i in range(3)]
    async with running(ms_settings(ms_root, max_batch_size=8, cache_bytes=0)) as r:
        gate = hold(r.services, "multistyle")
        first = asyncio.create_task(r.client.post("/v1/stylize?style=mosaic", content=inputs[0],
                                                  headers=PNG))
        await asyncio.to_thread(gate.entered.wait, 30)
        queued = [asyncio.create_task(r.client.post(f"/v1/stylize?style={style}",
                                                    content=data, headers=PNG))
                  for style, data in (("udnie", inputs[1]), ("candy:0.25,mosaic:0.75",
                                                             inputs[2]))]
        await until(lambda: r.services.batcher.queued == 2, what="2 queued requests")
        gate.release.set()
        responses = [await t for t in [first, *queued]]
        assert [resp.status_code for resp in responses] == [200] * 3
        assert gate.batches == [1, 2]              # udnie and the blend: one forward pass
        assert await r.metric("service_batch_size_count", model="multistyle") == 2
        assert await r.metric("service_batch_size_sum", model="multistyle") == 3
        rows = ([0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.25, 0.75, 0.0])
        for data, resp, row in zip(inputs, responses, rows, strict=True):
            assert diff(pixels(resp.content), direct("multistyle", data, row)).max() <= 1


class Recorder(nn.Module):
    """Records the batch shapes a network sees (class attribute: ImageNorm's copy shares it)."""

    shapes: ClassVar[list[tuple[int, ...]]] = []

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, *condition: torch.Tensor) -> torch.Tensor:
        Recorder.shapes.append(tuple(x.shape))
        return self.inner(x, *condition)


@pytest.mark.parametrize("norm_stats", ["image", "tile"])
async def test_big_blends_run_in_tiles_with_their_weights(ms_root: Path, direct,  # noqa: ANN001
                                                          norm_stats: str) -> None:
    settings = ms_settings(ms_root, tile_threshold_pixels=64 * 64, tile_size=48, tile_overlap=16,
                           tile_norm_stats=norm_stats)
    data = images.png(100, 90, seed=7)
    row = [0.6, 0.4, 0.0]
    async with running(settings) as r:
        model = r.services.registry.get("multistyle")
        Recorder.shapes = []
        model.module = Recorder(model.module)
        out = await stylize(r, data, "candy:0.6,mosaic:0.4")
    assert out.shape == (90, 100, 3)
    assert {s[2:] for s in Recorder.shapes} == {(48, 48)}   # never the whole image
    if norm_stats == "image":
        # Whole-image statistics: exactly what they give the equivalent single-style network
        # (tiles of a random network this small are far from untiled either way; the shipped
        # udnie's are within 2 levels, test_service_tiling.py).
        single = as_single_style(networks(ms_root)["multistyle"], row)
        assert diff(direct("multistyle", data, row), direct_net(single, pixels(data))).max() <= 1
        expected = ImageNorm(single, torch.device("cpu"), torch.float32).run_tiled(
            pixels(data), tile=48, overlap=16, batch_size=4)
        assert diff(out, expected).max() <= 1
        assert sum(s[0] for s in Recorder.shapes) == 16 * 9   # 15 measuring passes + 1, 3x3
    else:                       # each tile its own statistics: the tiles, blended, exactly
        tiles = run_tiled(pixels(data), lambda ts: [direct("multistyle", t, row) for t in ts],
                          tile=48, overlap=16)
        assert diff(out, tiles).max() <= 1


def test_every_execution_path_takes_the_style_weights(ms_root: Path, direct) -> None:  # noqa: ANN001
    """The rewrite and its ONNX export (a second input, `mix`) against the network itself, with
    two different rows in one batch."""
    net = networks(ms_root)["multistyle"]
    paths = execution.candidates(net, torch.device("cpu"), "float32", torch.float32)
    assert {"rewrite", "onnx_rewrite"} <= set(paths)
    image = images.pixels(37, 50, seed=8)      # sides not multiples of 4: the padding branch
    rows = [[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]
    x = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2).float() / 255
    for name, runner in paths.items():
        y = runner(x, torch.tensor(rows))
        out = (y.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for got, row in zip(out, rows, strict=True):
            assert diff(got, direct("multistyle", image, row)).max() <= 1, name


def test_measured_policy_runs_the_multistyle_network_with_its_weights(ms_root: Path,
                                                                      direct) -> None:  # noqa: ANN001
    registry = Registry(ms_root, ["multistyle"], device="cpu", dtype="float32",
                        policy="measure", policy_sizes=[32], policy_budget_s=0.5)
    (model,) = registry.load_all()
    assert model.styles == STYLES
    assert model.policy.source == "measured"
    assert model.policy.paths() <= {"inference_mode", "rewrite", "onnx_rewrite",
                                    "openvino_rewrite"}
    image = images.pixels(32, 32, seed=8)
    rows = [np.array([0.0, 0.0, 1.0], np.float32), np.array([0.5, 0.5, 0.0], np.float32)]
    outs = model.run([image, image], rows)
    for out, row in zip(outs, rows, strict=True):
        assert diff(out, direct("multistyle", image, row.tolist())).max() <= 1
    with pytest.raises(ValueError, match="one row of style weights per image"):
        model.run([image])
    with pytest.raises(ValueError, match=r"must be \(1, 3\)"):
        model.run([image], [np.ones(2, np.float32)])


async def test_a_style_of_the_multistyle_network_has_a_thumbnail(ms_root: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "mosaic.jpg").write_bytes(images.jpeg(300, 200))
    async with running(ms_settings(ms_root, style_images_dir=tmp_path)) as r:
        resp = await r.client.get("/v1/styles/mosaic/thumbnail")
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
        assert max(images.decode(resp.content).size) == 160
        network = await r.client.get("/v1/styles/multistyle/thumbnail")  # a model, not a style
        assert network.status_code == 404
        assert network.json()["error"]["code"] == "unknown_model"
