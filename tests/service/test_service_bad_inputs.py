"""A corpus of bad (and odd) inputs, generated here, each with its expected status; no 500s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import pytest_asyncio

from service.settings import Settings
from tests.helpers import images
from tests.helpers.server import Running, running

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_BODY_BYTES = 200_000

CASES = [
    # (id, content type, body, expected status, expected code)
    ("zero-bytes", "image/png", b"", 400, "invalid_image"),
    ("truncated-png", "image/png", images.truncated(images.png(64, 64)), 400, "invalid_image"),
    ("truncated-jpeg", "image/jpeg", images.truncated(images.jpeg(64, 64)), 400,
     "invalid_image"),
    ("text-as-png", "image/png", images.TEXT, 400, "invalid_image"),
    ("text", "text/plain", images.TEXT, 415, "unsupported_media_type"),
    ("svg", "image/svg+xml", images.SVG, 415, "unsupported_media_type"),
    ("svg-as-png", "image/png", images.SVG, 400, "invalid_image"),
    ("json", "application/json", b'{"image": "x"}', 415, "unsupported_media_type"),
    ("no-content-type", "", images.png(), 415, "unsupported_media_type"),
    ("animated-gif", "image/gif", images.animated_gif(), 415, "unsupported_media_type"),
    ("header-100000x100000", "image/png", images.png_claiming(100_000, 100_000), 413,
     "image_too_large"),
    ("small-file-huge-image", "image/png", images.png_bomb(20_000), 413, "image_too_large"),
    ("png-header-only", "image/png", images.png_claiming(64, 64), 400, "invalid_image"),
    ("cmyk-jpeg", "image/jpeg", images.jpeg(32, 32, mode="CMYK"), 200, None),
    ("16-bit-png", "image/png", images.png16(32, 32), 200, None),
    ("1x1", "image/png", images.png(1, 1), 200, None),
    ("gif-one-frame", "image/gif", images.animated_gif(frames=1), 200, None),
    ("webp", "image/webp", images.webp(), 200, None),
    ("jpeg-declared-png", "image/png", images.jpeg(), 200, None),   # sniffed from the bytes
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(store_root: Path) -> AsyncIterator[Running]:
    settings = Settings(model_store=store_root, device="cpu", dtype="float32", redis_url=None,
                        max_wait_ms=1, max_pixels=1_000_000, max_output_pixels=4_000_000,
                        max_body_bytes=MAX_BODY_BYTES)
    async with running(settings) as r:
        yield r


@pytest.mark.parametrize(("content_type", "body", "status", "code"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_corpus(api: Running, content_type: str, body: bytes, status: int,
                      code: str | None) -> None:
    assert len(body) < MAX_BODY_BYTES
    headers = {"content-type": content_type} if content_type else {}
    resp = await api.client.post("/v1/stylize?style=udnie", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    if code is not None:
        assert resp.json()["error"]["code"] == code
        assert resp.json()["error"]["message"]
    else:
        assert images.decode(resp.content).mode == "RGB"


async def test_one_pixel_superres(api: Running) -> None:
    resp = await api.client.post("/v1/superres?factor=4", content=images.png(1, 1),
                                 headers={"content-type": "image/png"})
    assert images.decode(resp.content).size == (4, 4)


async def test_sixteen_bit_is_scaled_not_clipped(api: Running) -> None:
    resp = await api.client.post("/v1/superres?factor=4", content=images.png16(32, 32),
                                 headers={"content-type": "image/png"})
    assert resp.status_code == 200
    from service.imaging import decode

    rgb = decode(images.png16(32, 32), max_pixels=10_000).rgb
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[-1, -1].tolist() == [255, 255, 255]
    assert 100 < np.median(rgb) < 155


async def test_superres_output_limit_is_checked_from_the_header(api: Running) -> None:
    resp = await api.client.post("/v1/superres?factor=8", content=images.png_claiming(300, 300),
                                 headers={"content-type": "image/png"})
    assert resp.status_code == 413 and "output" in resp.json()["error"]["message"]


@pytest.mark.parametrize(("files", "status", "code"), [
    ({"picture": ("a.png", images.png(), "image/png")}, 422, "invalid_parameter"),
    ({"image": ("a.txt", images.TEXT, "text/plain")}, 415, "unsupported_media_type"),
    ({"image": ("a.bin", images.TEXT, "application/octet-stream")}, 400, "invalid_image"),
])
async def test_bad_multipart(api: Running, files: dict, status: int, code: str) -> None:
    resp = await api.client.post("/v1/stylize?style=udnie", files=files)
    assert resp.status_code == status and resp.json()["error"]["code"] == code


async def test_multipart_without_boundary(api: Running) -> None:
    resp = await api.client.post("/v1/stylize?style=udnie", content=images.png(),
                                 headers={"content-type": "multipart/form-data"})
    assert resp.status_code == 400


async def raw_request(url: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes on a fresh socket; return the status and the response head."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(response.split()[1]), response
    finally:
        writer.close()


async def test_declared_body_over_the_limit_is_refused_before_reading(api: Running) -> None:
    # Claims a gigabyte and sends nothing: the answer must come from the header alone.
    status, head = await raw_request(
        api.url, "POST /v1/stylize?style=udnie HTTP/1.1\r\nHost: test\r\n"
                 "Content-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n")
    assert status == 413 and b"connection: close" in head.lower()


async def test_chunked_body_over_the_limit_stops_reading(store_root: Path) -> None:
    settings = Settings(model_store=store_root, device="cpu", redis_url=None,
                        max_body_bytes=1000)
    async with running(settings) as r:
        chunk = b"\x00" * 1500
        status, _ = await raw_request(
            r.url, "POST /v1/stylize?style=udnie HTTP/1.1\r\nHost: test\r\n"
                   "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n",
            f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
        assert status == 413


async def test_nothing_was_a_server_error(api: Running) -> None:
    assert await api.metric("service_request_duration_seconds_count", status="500") == 0
    assert await api.metric("service_rejections_total", reason="too_large") >= 3
    assert await api.metric("service_inflight_requests") == 0
