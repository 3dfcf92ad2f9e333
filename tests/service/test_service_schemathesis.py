"""Schemathesis against the service's own OpenAPI schema, served live: whatever it generates
from the schema (valid and invalid parameters, bodies, content types), no response is a 5xx and
every response matches the schema (status, content type, headers, body).

Image bodies come from a strategy that makes real small images (bench/hostile.py), so that
valid requests reach the model rather than stopping at 400. Examples are bounded and
derandomized: repeatable runs of a few seconds."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from bench.hostile import register_image_strategies
from service.app import create_app
from service.middleware import bounded_http_protocol
from service.settings import Settings

EXAMPLES = 20
API_KEY = "schemathesis-key-0042"
register_image_strategies()


@dataclass
class Live:
    url: str
    headers: dict[str, str]


def _serve(settings: Settings) -> Iterator[str]:
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", lifespan="on",
        http=bounded_http_protocol(max_head_bytes=65536, head_timeout_s=10)))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(3000):
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "uvicorn did not start"
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        for _ in range(600):                     # models load in the background
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
            thread.join(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module", params=["open", "with-keys"])
def live(request: pytest.FixtureRequest, store_root: Path) -> Iterator[Live]:
    keys = API_KEY if request.param == "with-keys" else ""
    settings = Settings(model_store=store_root, device="cpu", dtype="float32", redis_url=None,
                        max_wait_ms=1, max_pixels=1_000_000, max_output_pixels=4_000_000,
                        max_body_bytes=2_000_000, api_keys=keys)
    headers = {"Authorization": f"Bearer {API_KEY}"} if keys else {}
    for url in _serve(settings):
        yield Live(url, headers)


OPERATIONS = [("POST", "/v1/stylize"), ("POST", "/v1/superres"), ("GET", "/v1/models"),
              ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
# Random names are 404s; these reach decoding and the model as well.
KNOWN = {"/v1/stylize": [{"style": "udnie"}, {"style": "candy"}],
         "/v1/superres": [{"factor": 4}, {"factor": 8, "model": "sr8"}]}
# Negative data (parameters and bodies that break the schema) needs parameters to break.
CASES = [(method, path, mode) for method, path in OPERATIONS for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or path in KNOWN]


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{path}-{mode}" for _, path, mode in CASES])
def test_schema_conformance_and_no_server_errors(live: Live, method: str, path: str,
                                                 mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operation = schema[path][method]
    strategy = st.one_of(operation.as_strategy(mode), *(
        operation.as_strategy(mode, query=query) for query in KNOWN.get(path, [])))
    statuses: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=live.headers, timeout=30)
        statuses.append(response.status_code)

    check()
    assert statuses and max(statuses) < 500
    if path in KNOWN and mode is GenerationMode.POSITIVE:
        assert 200 in statuses, "no generated request reached the model"
