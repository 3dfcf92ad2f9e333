"""The web page at / and the style thumbnails; the page driven in a real headless browser
(Debian's chromium through Playwright) against the app served by uvicorn."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image

from service.app import create_app
from service.policy import ModelPolicy, SizeChoice
from service.settings import Settings
from tests.helpers import images
from tests.helpers.models import hold, make_multistyle_store, own_painting
from tests.helpers.server import running

CHROMIUM = Path("/usr/bin/chromium")
NATURAL_SIZE = "(r => [r.naturalWidth, r.naturalHeight])(document.getElementById('result'))"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture
def paintings(tmp_path: Path) -> Path:
    """A style-images folder with a painting for candy only (udnie falls back to its name)."""
    folder = tmp_path / "styles"
    folder.mkdir()
    Image.fromarray(images.pixels(400, 300, seed=8)).save(folder / "candy.jpg", quality=90)
    return folder


# -- the page and the thumbnails over HTTP ------------------------------------------------------


async def test_page_and_its_assets_are_served(make_settings) -> None:  # noqa: ANN001
    async with running(make_settings()) as api:
        page = await api.client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<input id="file"' in page.text and "/static/app.js" in page.text
        for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "css")):
            resp = await api.client.get(asset)
            assert resp.status_code == 200 and kind in resp.headers["content-type"]
        assert (await api.client.get("/static/../settings.py")).status_code == 404
        # nothing from outside the service: no CDN, no external font
        for text in (page.text, (await api.client.get("/static/app.js")).text):
            assert "http://" not in text and "https://" not in text


async def test_thumbnail_is_a_small_jpeg_of_the_painting(make_settings, paintings: Path) -> None:  # noqa: ANN001
    async with running(make_settings(style_images_dir=paintings)) as api:
        resp = await api.client.get("/v1/styles/candy/thumbnail")
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
        thumb = images.decode(resp.content)
        assert thumb.size == (160, 120)                         # 400x300, longest side 160
        assert "max-age" in resp.headers["cache-control"]

        missing = await api.client.get("/v1/styles/udnie/thumbnail")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "no_thumbnail"
        unknown = await api.client.get("/v1/styles/nope/thumbnail")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "unknown_model"
        superres = await api.client.get("/v1/styles/sr4/thumbnail")   # a model, not a style
        assert superres.status_code == 404


async def test_no_paintings_folder_means_no_thumbnails(make_settings) -> None:  # noqa: ANN001
    async with running(make_settings(style_images_dir=None)) as api:
        resp = await api.client.get("/v1/styles/candy/thumbnail")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "no_thumbnail"


# -- in a real browser --------------------------------------------------------------------------


@pytest.fixture
def served(make_settings, paintings: Path) -> Iterator[str]:  # noqa: ANN001
    """The app with the tiny store and a painting for candy; yields the base URL."""
    with serve(make_settings(style_images_dir=paintings)) as url:
        yield url


@contextlib.contextmanager
def serve(settings: Settings, app: FastAPI | None = None) -> Iterator[str]:
    """The app (`create_app(settings)` unless given) under uvicorn on 127.0.0.1:<free port> in
    a thread (Playwright's sync API cannot run inside the test's event loop), models loaded;
    yields the base URL."""
    app = app or create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "the models to load")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def browser_page(url: str) -> Iterator[Any]:
    """A page of Debian's headless chromium (through Playwright) opened at `url`."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


@needs_chromium
def test_page_in_a_browser_upload_result_and_errors(served: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(images.png(64, 48, seed=21))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not pixels\n")

    with browser_page(served) as page:
        # The styles come from /v1/models; candy has a painting, udnie only its name.
        page.wait_for_selector("#styles input[value=candy]", state="attached")
        page.wait_for_function("document.querySelector('#styles img')?.naturalWidth > 0")
        assert page.locator("#styles img").count() == 1
        assert "udnie" in page.locator("#styles").inner_text()

        # Style: upload, pick udnie by keyboard-accessible label, transform.
        page.set_input_files("#file", str(photo))
        page.get_by_label("udnie").check()
        page.get_by_label("Keep the image's colours").check()
        page.get_by_role("button", name="Transform").click()
        page.wait_for_selector("#result-box", state="visible")
        page.wait_for_function("document.getElementById('result').naturalWidth > 0")
        size = page.evaluate(NATURAL_SIZE)
        assert size == [64, 48]
        assert page.get_attribute("#download", "download") == "photo-udnie.png"
        assert page.get_attribute("#download", "href").startswith("blob:")
        assert not page.locator("#error").is_visible()

        # The before/after slider moves the split.
        page.locator("#split").fill("20")
        assert "20%" in page.evaluate(
            "getComputedStyle(document.getElementById('compare'))"
            ".getPropertyValue('--split')")

        # Super-resolution x4: the result is four times the size.
        page.get_by_label("Super-resolution").check()
        page.get_by_label("×4").check()
        page.evaluate("document.getElementById('result').removeAttribute('src')")
        page.get_by_role("button", name="Transform").click()
        page.wait_for_function("document.getElementById('result').naturalWidth === 256")
        assert page.evaluate(NATURAL_SIZE) == [256, 192]

        # A text file named .png: the service's error message is shown.
        page.set_input_files("#file", str(not_an_image))
        page.get_by_role("button", name="Transform").click()
        error = page.locator("#error")
        error.wait_for(state="visible")
        assert "not an image" in error.inner_text()
        assert "400" in error.inner_text()


@needs_chromium
def test_page_offers_the_styles_a_multistyle_network_holds(make_settings, tmp_path: Path) -> None:  # noqa: ANN001
    """The multi-style network is not a style itself: its styles are, beside single ones."""
    make_multistyle_store(tmp_path / "store", ("candy", "mosaic", "udnie"), singles=("wave",))
    photo = tmp_path / "photo.png"
    photo.write_bytes(images.png(40, 32, seed=5))
    with serve(make_settings(model_store=tmp_path / "store")) as url, \
            browser_page(url) as page:
        page.wait_for_selector("#styles input[value=wave]", state="attached")
        values = page.eval_on_selector_all("#styles input", "xs => xs.map(x => x.value)")
        assert values == ["candy", "mosaic", "udnie", "wave"]
        page.set_input_files("#file", str(photo))
        page.get_by_label("mosaic").check()          # held only by the multi-style network
        page.get_by_role("button", name="Transform").click()
        page.wait_for_function("document.getElementById('result').naturalWidth > 0")
        assert page.evaluate(NATURAL_SIZE) == [40, 32]
        assert not page.locator("#error").is_visible()


@needs_chromium
def test_page_runs_work_too_slow_for_a_request_as_a_job_with_a_progress_bar(
        make_settings, tmp_path: Path) -> None:  # noqa: ANN001
    """The service predicts 8 s for the image, over the request's 5 s: the page gets 413
    too_slow, submits a job, shows the bar while it runs, then the result."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(images.png(64, 48, seed=3))
    settings = make_settings(models=["udnie"], request_timeout_s=5, job_timeout_s=60)
    app = create_app(settings)
    with serve(settings, app) as url, browser_page(url) as page:
        services = app.state.services
        services.registry.get("udnie").policy = ModelPolicy(
            "measured", [SizeChoice(32, "base", 4, {1: 2500.0})], SizeChoice(0, "base", 4))
        gate = hold(services, "udnie")
        page.wait_for_selector("#styles input[value=udnie]", state="attached")
        page.set_input_files("#file", str(photo))
        page.get_by_label("udnie").check()
        page.get_by_role("button", name="Transform").click()
        page.locator("#progress").wait_for(state="visible")
        assert gate.entered.wait(15)                   # the job is running, held at the gate
        page.wait_for_function("document.getElementById('status').textContent"
                               ".includes('as a job')")
        gate.release.set()
        page.wait_for_function("document.getElementById('result').naturalWidth > 0")
        assert page.evaluate(NATURAL_SIZE) == [64, 48]
        assert not page.locator("#progress").is_visible()
        assert not page.locator("#error").is_visible()
        assert page.locator("#status").inner_text() == "Done."


@needs_chromium
def test_page_learns_a_style_from_a_painting_and_stylizes_with_it(make_settings,
                                                                 tmp_path: Path) -> None:  # noqa: ANN001
    """The painting is what the tiny network's starting row for a new style paints already
    (as in test_service_learn_style.py), so the gate passes after 50 steps."""
    import numpy as np

    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    painting = tmp_path / "own.png"
    painting.write_bytes(own_painting(store))
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(photos / f"{i}.png")
    photo = tmp_path / "photo.png"
    photo.write_bytes(images.png(40, 32, seed=5))
    settings = make_settings(
        model_store=store.root, learn_photos_dir=photos, learn_iterations=50, learn_crop_size=32,
        job_lease_s=0.6, learn_extra_args="--image-size 32 --batch-size 2 --lr 0.05 --device cpu "
                                          "--amp none --style-weight 1e-4")
    with serve(settings) as url, browser_page(url) as page:
        page.set_default_timeout(120_000)
        page.wait_for_selector("#styles input[value=udnie]", state="attached")
        page.locator("#new-style summary").click()
        page.set_input_files("#painting", str(painting))
        page.fill("#style-name", "own")
        page.get_by_role("button", name="Learn this style").click()
        page.locator("#learn-progress").wait_for(state="visible")
        page.wait_for_function("document.getElementById('learn-status').textContent"
                               ".startsWith('Learned own')")
        assert not page.locator("#learn-progress").is_visible()
        assert not page.locator("#learn-error").is_visible()
        assert page.locator("#styles input[value=own]").is_checked()
        page.set_input_files("#file", str(photo))
        page.get_by_role("button", name="Transform").click()
        page.wait_for_function("document.getElementById('result').naturalWidth > 0")
        assert page.evaluate(NATURAL_SIZE) == [40, 32]
        assert page.get_attribute("#download", "download") == "photo-own.png"
