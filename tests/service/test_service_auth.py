"""Optional API keys: off by default; when on, /v1/* needs a key, probes stay open, /metrics can
have its own key, and a refusal says nothing about which keys exist."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from service.auth import KeyRing, key_id
from service.settings import Settings
from tests.helpers import images
from tests.helpers.server import Running, running

module_loop = pytest.mark.asyncio(loop_scope="module")   # shares the module's app
KEYS = ("k-alpha-0123456789", "k-beta-9876543210")
METRICS_KEY = "m-scrape-secret"
PNG = {"content-type": "image/png"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(store_root: Path) -> AsyncIterator[Running]:
    settings = Settings(model_store=store_root, models=["udnie"], device="cpu", dtype="float32",
                        redis_url=None, max_wait_ms=1, api_keys=",".join(KEYS),
                        metrics_api_key=METRICS_KEY)
    async with running(settings) as r:
        yield r


def assert_unauthorized(resp) -> None:  # noqa: ANN001 - httpx.Response
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    error = resp.json()["error"]
    assert error["code"] == "unauthorized" and error["message"]
    for key in (*KEYS, METRICS_KEY):          # nothing about the keys, not even a prefix
        assert key[:6] not in resp.text


async def test_keys_are_off_by_default(make_settings) -> None:
    async with running(make_settings(models=["udnie"])) as r:
        assert (await r.client.get("/v1/models")).status_code == 200
        resp = await r.client.post("/v1/stylize?style=udnie", content=images.png(), headers=PNG)
        assert resp.status_code == 200
        assert (await r.client.get("/metrics")).status_code == 200
        schema = (await r.client.get("/openapi.json")).json()
        assert "securitySchemes" not in schema.get("components", {})


@module_loop
@pytest.mark.parametrize("headers", [
    {},
    {"authorization": "Bearer wrong"},
    {"x-api-key": "wrong"},
    {"authorization": f"Bearer {KEYS[0][:-1]}"},     # one character short
    {"authorization": f"Basic {KEYS[0]}"},           # the right key in the wrong scheme
    {"x-api-key": ""},
    {"authorization": f"Bearer {METRICS_KEY}"},      # the metrics key does not open the API
], ids=["missing", "wrong-bearer", "wrong-x-api-key", "prefix", "basic", "empty", "metrics-key"])
async def test_missing_or_wrong_key_is_401_in_the_envelope(api: Running, headers: dict) -> None:
    assert_unauthorized(await api.client.get("/v1/models", headers=headers))
    assert_unauthorized(await api.client.post("/v1/stylize?style=udnie", content=images.png(),
                                              headers={**PNG, **headers}))


@module_loop
async def test_every_refusal_reads_the_same(api: Running) -> None:
    bodies = {(await api.client.get("/v1/models", headers=h)).content
              for h in ({}, {"x-api-key": "nope"}, {"authorization": f"Bearer {KEYS[1]}x"})}
    assert len(bodies) == 1


@module_loop
@pytest.mark.parametrize("headers", [
    {"authorization": f"Bearer {KEYS[0]}"},
    {"authorization": f"bearer {KEYS[1]}"},
    {"x-api-key": KEYS[1]},
], ids=["bearer", "bearer-lowercase-second-key", "x-api-key"])
async def test_a_valid_key_is_let_through(api: Running, headers: dict) -> None:
    assert (await api.client.get("/v1/models", headers=headers)).status_code == 200
    resp = await api.client.post("/v1/stylize?style=udnie", content=images.png(seed=3),
                                 headers={**PNG, **headers})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"


@module_loop
async def test_probes_and_the_api_description_stay_open(api: Running) -> None:
    assert (await api.client.get("/healthz")).status_code == 200
    assert (await api.client.get("/readyz")).status_code == 200
    schema = (await api.client.get("/openapi.json")).json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert schema["paths"]["/v1/stylize"]["post"]["security"] == [{"bearer": []},
                                                                  {"apiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


@module_loop
async def test_the_web_page_stays_open_and_its_api_calls_need_the_key(api: Running) -> None:
    page = await api.client.get("/")
    assert page.status_code == 200 and 'id="api-key"' in page.text
    script = await api.client.get("/static/app.js")
    assert script.status_code == 200 and "X-API-Key" in script.text
    assert (await api.client.get("/static/no-such-file.js")).status_code == 404
    assert_unauthorized(await api.client.get("/v1/models"))
    assert_unauthorized(await api.client.get("/v1/styles/udnie/thumbnail"))
    assert_unauthorized(await api.client.get("/staticky"))  # shares "/static", not "/static/"


@module_loop
async def test_unknown_paths_do_not_reveal_what_exists(api: Running) -> None:
    assert_unauthorized(await api.client.get("/v1/secret-admin"))
    assert_unauthorized(await api.client.get("/anything"))


@module_loop
async def test_metrics_have_their_own_key(api: Running) -> None:
    assert_unauthorized(await api.client.get("/metrics"))
    assert_unauthorized(await api.client.get("/metrics", headers={"x-api-key": KEYS[0]}))
    resp = await api.client.get("/metrics", headers={"authorization": f"Bearer {METRICS_KEY}"})
    assert resp.status_code == 200 and "service_rejections_total" in resp.text


@module_loop
async def test_refused_before_admission_or_reading_the_body(api: Running) -> None:
    """A wrong key with a body announced as 1 GB and never sent: 401 from the head alone."""
    parts = urlsplit(api.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(b"POST /v1/stylize?style=udnie HTTP/1.1\r\nHost: t\r\nX-API-Key: nope\r\n"
                     b"Content-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.split()[1] == b"401"
    metrics = {"authorization": f"Bearer {METRICS_KEY}"}
    text = (await api.client.get("/metrics", headers=metrics)).text
    assert "service_inflight_requests 0.0" in text
    assert 'service_rejections_total{reason="unauthorized"}' in text


def test_key_ring_matches_whole_keys_only() -> None:
    ring = KeyRing(KEYS)
    assert ring.match(KEYS[0]) == key_id(KEYS[0]) and ring.match(KEYS[1]) == key_id(KEYS[1])
    for wrong in (None, "", KEYS[0][:-1], KEYS[0] + "x", KEYS[0].upper()):
        assert ring.match(wrong) is None
    assert not KeyRing([]) and ring
    assert KEYS[0] not in key_id(KEYS[0]) and len(key_id(KEYS[0])) == len("key-") + 12


def test_keys_come_from_the_environment_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_API_KEYS", f" {KEYS[0]} ,{KEYS[1]},")
    monkeypatch.setenv("SERVICE_METRICS_API_KEY", METRICS_KEY)
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == list(KEYS)
    assert settings.metrics_api_key is not None
    assert not any(k in repr(settings) for k in (*KEYS, METRICS_KEY))
    monkeypatch.setenv("SERVICE_API_KEYS", "")
    monkeypatch.setenv("SERVICE_METRICS_API_KEY", "")
    assert Settings().api_keys == [] and Settings().metrics_api_key is None
