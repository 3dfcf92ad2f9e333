"""The HTTP API against one running app: routes, formats, headers, errors, OpenAPI, metrics."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from model_store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.helpers import images
from tests.helpers.models import make_store
from tests.helpers.server import Running, running, serve

pytestmark = pytest.mark.asyncio(loop_scope="module")
PNG = {"content-type": "image/png"}


async def test_health_ready_and_models(api: Running) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "models": 4}
    models = {m["name"]: m for m in (await api.client.get("/v1/models")).json()["models"]}
    assert set(models) == {"candy", "udnie", "sr4", "sr8"}
    manifest = ModelStore(api.services.settings.model_store).manifest("sr8")
    policy = models["sr8"].pop("policy")   # tests/service/test_service_policy.py checks it
    assert (policy["source"], policy["lanes"], policy["default"]["max_batch"]) == ("fixed", 1, 8)
    assert models["sr8"] == {"name": "sr8", "task": "superres", "factor": 8, "styles": [],
                             "device": "cpu", "dtype": "float32", "digest": manifest.sha256,
                             "metrics": {}}
    assert models["udnie"]["factor"] is None
    assert gc.get_freeze_count() > 0   # what was alive at ready is out of the collector's way


async def test_stylize_raw_body_headers_and_cache(api: Running) -> None:
    data = images.png(48, 20, seed=31)
    first = await api.client.post("/v1/stylize?style=candy", content=data,
                                  headers={**PNG, "X-Request-ID": "req-123"})
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/png"
    assert first.headers["x-request-id"] == "req-123"
    assert first.headers["x-cache"] == "miss"
    timing = first.headers["server-timing"]
    assert all(f"{phase};dur=" in timing for phase in ("decode", "queue", "compute", "encode"))
    out = images.decode(first.content)
    assert out.size == (48, 20) and out.mode == "RGB"

    second = await api.client.post("/v1/stylize?style=candy", content=data, headers=PNG)
    assert second.headers["x-cache"] == "hit" and second.content == first.content
    assert len(second.headers["x-request-id"]) == 32          # generated
    other = await api.client.post("/v1/stylize?style=udnie", content=data, headers=PNG)
    assert other.headers["x-cache"] == "miss" and other.content != first.content


async def test_multipart_upload(api: Running) -> None:
    data = images.jpeg(24, 24, seed=3)
    resp = await api.client.post("/v1/stylize?style=udnie",
                                 files={"image": ("photo.jpg", data, "image/jpeg")},
                                 data={"note": "ignored"})
    assert resp.status_code == 200 and images.decode(resp.content).size == (24, 24)


async def test_output_format_from_param_or_accept(api: Running) -> None:
    data = images.png(32, 32, seed=4)
    jpeg = await api.client.post("/v1/stylize?style=udnie&format=jpeg&quality=50",
                                 content=data, headers=PNG)
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert images.decode(jpeg.content).format == "JPEG"
    accept = "text/html, image/webp;q=0.9, */*;q=0.1"
    webp = await api.client.post("/v1/stylize?style=udnie", content=data,
                                 headers={**PNG, "Accept": accept})
    assert webp.headers["content-type"] == "image/webp"
    default = await api.client.post("/v1/stylize?style=udnie", content=data,
                                    headers={**PNG, "Accept": "text/html"})
    assert default.headers["content-type"] == "image/png"


@pytest.mark.parametrize(("factor", "model"), [(4, None), (8, None), (4, "sr4")])
async def test_superres_scales_by_factor(api: Running, factor: int, model: str | None) -> None:
    query = f"factor={factor}" + (f"&model={model}" if model else "")
    resp = await api.client.post(f"/v1/superres?{query}", content=images.png(12, 10), headers=PNG)
    assert resp.status_code == 200
    assert images.decode(resp.content).size == (12 * factor, 10 * factor)


@pytest.mark.parametrize(("url", "status", "code", "mentions"), [
    ("/v1/stylize?style=starry", 404, "unknown_model", "candy, udnie"),
    ("/v1/superres?factor=3", 404, "unknown_model", "4, 8"),
    ("/v1/superres?factor=4&model=sr8", 404, "unknown_model", "sr4"),
    ("/v1/stylize", 422, "invalid_parameter", "style"),
    ("/v1/superres?factor=four", 422, "invalid_parameter", "factor"),
    ("/v1/superres?factor=0", 422, "invalid_parameter", "factor"),
    ("/v1/stylize?style=udnie&format=gif", 422, "invalid_parameter", "format"),
    ("/v1/stylize?style=udnie&quality=101", 422, "invalid_parameter", "quality"),
    ("/v1/nothing", 404, "not_found", "/v1/nothing"),
])
async def test_errors_use_the_envelope(api: Running, url: str, status: int, code: str,
                                       mentions: str) -> None:
    resp = await api.client.post(url, content=images.png(), headers=PNG)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    assert mentions in resp.json()["error"]["message"]


async def test_wrong_method_is_405_in_the_envelope(api: Running) -> None:
    resp = await api.client.get("/v1/stylize?style=udnie")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


async def test_exif_orientation_is_applied(api: Running) -> None:
    rotated = images.jpeg(40, 20, orientation=6)     # stored 40x20, displayed 20x40
    resp = await api.client.post("/v1/stylize?style=udnie", content=rotated,
                                 headers={"content-type": "image/jpeg"})
    assert images.decode(resp.content).size == (20, 40)


async def test_alpha_is_carried_over(api: Running) -> None:
    data = images.png(20, 16, mode="RGBA")
    resp = await api.client.post("/v1/superres?factor=4", content=data, headers=PNG)
    out = images.decode(resp.content)
    assert out.mode == "RGBA" and out.size == (80, 64)
    alpha = np.asarray(out)[..., 3]
    assert alpha[:, :30].min() >= 250 and alpha[:, 50:].max() <= 70
    jpeg = await api.client.post("/v1/stylize?style=udnie&format=jpeg", content=data,
                                 headers=PNG)
    assert images.decode(jpeg.content).mode == "RGB"


@pytest.mark.parametrize(("mode", "out_mode"), [
    ("L", "RGB"), ("1", "RGB"), ("LA", "RGB"),   # LA here is fully opaque: alpha dropped
    ("P", "RGBA"), ("RGBA", "RGBA"),             # transparent palette entry, half-transparent
])
async def test_other_modes_are_converted(api: Running, mode: str, out_mode: str) -> None:
    resp = await api.client.post("/v1/stylize?style=udnie",
                                 content=images.png(16, 16, mode=mode), headers=PNG)
    assert resp.status_code == 200
    assert images.decode(resp.content).mode == out_mode


async def test_openapi_documents_the_api(api: Running) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    stylize = spec["paths"]["/v1/stylize"]["post"]
    assert {p["name"] for p in stylize["parameters"]} == {"style", "format", "quality",
                                                           "strength", "preserve_color"}
    body = stylize["requestBody"]["content"]
    assert "image/png" in body and "multipart/form-data" in body
    assert "image/webp" in stylize["responses"]["200"]["content"]
    assert {"404", "413", "415", "422", "429", "504"} <= set(stylize["responses"])
    superres = spec["paths"]["/v1/superres"]["post"]
    assert {p["name"] for p in superres["parameters"]} == {"factor", "model", "format", "quality"}
    assert {"/healthz", "/readyz", "/metrics", "/v1/models"} <= set(spec["paths"])
    assert (await api.client.get("/docs")).status_code == 200


async def test_metrics_exposition(api: Running) -> None:
    await api.client.post("/v1/stylize?style=udnie", content=images.png(seed=77), headers=PNG)
    text = (await api.client.get("/metrics")).text
    for name in ("service_request_duration_seconds", "service_queue_wait_seconds",
                 "service_batch_size", "service_forward_seconds", "service_decode_seconds",
                 "service_encode_seconds", "service_queue_depth", "service_inflight_requests",
                 "service_rejections_total", "service_cache_hits_total",
                 "service_cache_misses_total", "service_model_info",
                 "service_gpu_memory_bytes"):
        assert f"# TYPE {name} " in text, name
    assert await api.metric("service_model_info", name="sr4", task="superres", factor="4",
                            device="cpu", dtype="float32") == 1
    assert await api.metric("service_request_duration_seconds_count", route="/v1/stylize",
                            model="udnie", status="200") >= 1
    assert await api.metric("service_request_duration_seconds_count",
                            status="500") == 0


async def test_empty_store_is_ready_with_no_models(tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path / "empty", device="cpu", redis_url=None)
    async with running(settings) as r:
        assert (await r.client.get("/readyz")).status_code == 200
        assert (await r.client.get("/v1/models")).json() == {"models": [], "refused": {}}
        resp = await r.client.post("/v1/stylize?style=udnie", content=images.png(), headers=PNG)
        assert resp.status_code == 404 and "available: none" in resp.json()["error"]["message"]


async def test_not_ready_while_loading(store_root: Path) -> None:
    settings = Settings(model_store=store_root, device="cpu", redis_url=None)
    app = create_app(settings)
    registry = app.state.services.registry
    release = threading.Event()
    load_all = registry.load_all
    registry.load_all = lambda: (release.wait(30), load_all())[1]   # hold the loading
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/healthz")).status_code == 200
        starting = await client.get("/readyz")
        assert starting.status_code == 503 and starting.json()["status"] == "starting"
        early = await client.post("/v1/stylize?style=udnie", content=images.png(), headers=PNG)
        assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
        release.set()
        await app.state.services.wait_ready()
        assert (await client.get("/readyz")).status_code == 200


async def test_a_corrupt_store_fails_readiness(tmp_path: Path) -> None:
    make_store(tmp_path, styles=("udnie",), factors=())
    (tmp_path / "udnie" / "model.safetensors").write_bytes(b"not the weights")
    settings = Settings(model_store=tmp_path, device="cpu", redis_url=None)
    async with running(settings) as r:
        resp = await r.client.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["status"] == "failed" and "sha256" in resp.json()["error"]
