"""New styles learned over HTTP (POST /v1/styles, service/style_learning.py): the limits, a
real training process followed through the job, the reload gate deciding, the store left as
it was when the style is refused."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from model_store import ModelStore
from service import errors, quality
from service.auth import key_id
from tests.helpers import images
from tests.helpers.models import make_multistyle_store, own_painting
from tests.helpers.server import running, until

PNG = {"content-type": "image/png"}
FAST = ("--image-size 32 --batch-size 2 --add-style-lr 0.05 --device cpu --amp none "
        "--style-weight 1e-4")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(folder / f"{i}.png")
    return folder


def painting() -> bytes:
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:] = (240, 200, 30)
    stripes[::4] = (20, 20, 160)
    return images.encode(Image.fromarray(stripes))


async def finished(client, url: str, timeout_s: float = 240) -> dict:  # noqa: ANN001
    end = time.monotonic() + timeout_s
    seen = []
    while True:
        status = (await client.get(url)).json()
        seen.append(status)
        if status["state"] in ("done", "failed"):
            return {**status, "seen": seen}
        assert time.monotonic() < end, f"the job did not finish: {status}"
        await asyncio.sleep(0.2)


async def test_limits_are_answered_at_once(tmp_path, make_settings, photos):
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=("wave",))
    settings = make_settings(model_store=store.root, learn_photos_dir=photos)
    async with running(settings) as r:
        cases = [("udnie", painting(), 409, "style_exists"),
                 ("wave", painting(), 409, "style_exists"),
                 ("Bad Name", painting(), 422, "invalid_parameter"),
                 ("../x", painting(), 422, "invalid_parameter"),
                 ("fine", b"not an image", 400, "invalid_image"),
                 ("fine", images.png(2000, 1000), 413, "image_too_large")]
        for name, body, code, error in cases:
            answer = await r.client.post("/v1/styles", params={"name": name}, content=body,
                                         headers=PNG)
            assert (answer.status_code, answer.json()["error"]["code"]) == (code, error), name
        listed = (await r.client.get("/v1/styles")).json()["styles"]
        assert [(s["name"], s["models"], s["origin"]) for s in listed] == [
            ("candy", ["multistyle"], "shipped"), ("udnie", ["multistyle"], "shipped"),
            ("wave", ["wave"], "shipped")]
    async with running(make_settings(model_store=store.root, learn_photos_dir=None)) as r:
        answer = await r.client.post("/v1/styles?name=fine", content=painting(), headers=PNG)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "learning_unavailable"


def learn_settings(make_settings, store: ModelStore, photos: Path):  # noqa: ANN201
    return make_settings(model_store=store.root, learn_photos_dir=photos, learn_iterations=50,
                         learn_crop_size=32, learn_extra_args=FAST, cache_bytes=0,
                         job_lease_s=0.6)   # progress saved every 0.2 s


async def test_a_style_the_gate_refuses_leaves_the_store_as_it_was(tmp_path, make_settings,
                                                                    photos):
    """A tiny random network cannot learn stripes in 50 steps: refused, and put back."""
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    before = {f: (store.root / "multistyle" / f).read_bytes()
              for f in ("model.safetensors", "manifest.json")}
    async with running(learn_settings(make_settings, store, photos)) as r:
        submitted = await r.client.post("/v1/styles?name=stripes", content=painting(),
                                        headers=PNG)
        assert submitted.status_code == 202 and submitted.json()["kind"] == "learn-style"
        status = await finished(r.client, submitted.json()["url"])
        running_steps = [s["progress"]["done"] for s in status["seen"]
                         if s["state"] == "running"]
        assert running_steps == sorted(running_steps) and 25 in running_steps
        assert status["progress"] == {"done": 50, "total": 50}
        assert set(status["detail"]["losses"]) == {"content", "style", "tv", "total"}
        assert status["state"] == "failed" and status["error"]["code"] == "style_rejected"
        assert "texture statistics" in status["error"]["message"]
        listed = {s["name"] for s in (await r.client.get("/v1/styles")).json()["styles"]}
        assert listed == {"candy", "udnie"}
        after = {f: (store.root / "multistyle" / f).read_bytes() for f in before}
        assert after == before
        assert not (store.root / "multistyle" / "paintings" / "stripes.jpg").exists()
        assert (await r.client.post("/v1/stylize?style=stripes", content=images.png(),
                                    headers=PNG)).status_code == 404


async def test_a_learned_style_is_served_and_batched_with_the_others(tmp_path, make_settings,
                                                                     photos):
    """The painting is what the network's starting row for the new style already paints, so
    the gate passes: the style is learned, served alone and in blends, the others unchanged."""
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    body = own_painting(store)
    photo = images.png(40, 32, seed=4)
    async with running(learn_settings(make_settings, store, photos)) as r:
        async def stylize(style: str) -> bytes:
            answer = await r.client.post("/v1/stylize", params={"style": style},
                                         content=photo, headers=PNG)
            assert answer.status_code == 200, answer.text
            return answer.content

        candy = await stylize("candy")
        submitted = await r.client.post("/v1/styles?name=own", content=body, headers=PNG)
        status = await finished(r.client, submitted.json()["url"])
        assert status["state"] == "done", status["error"]
        result = (await r.client.get(status["result"])).json()
        assert result["style"] == "own" and result["reload"]["replaced"] == ["multistyle"]
        assert result["painting_sha256"] == hashlib.sha256(body).hexdigest()
        listed = {s["name"]: s for s in (await r.client.get("/v1/styles")).json()["styles"]}
        assert listed["own"]["origin"] == "learned" and listed["candy"]["origin"] == "shipped"
        assert listed["own"]["learned"]["steps"] == 50
        assert await stylize("candy") == candy                    # the others as they were
        assert await stylize("own") != candy
        assert await stylize("own:0.5,candy:0.5") not in (candy, await stylize("own"))
        kept = ModelStore(store.root).painting("multistyle", "own")
        assert kept is not None
        # the figure the gate passed it on, kept with its manifest entry, measured again here
        gate = result["reload"]["gates"]["multistyle"]["own"]
        assert result["gate"] == listed["own"]["learned"]["gate"] == gate
        manifest = ModelStore(store.root).manifest("multistyle")
        assert manifest.metrics["learned_styles"]["own"]["gate"] == gate
        served = r.services.registry.get("multistyle")
        assert served.manifest.metrics["learned_styles"]["own"]["gate"] == gate
        again = quality.style_gate(served, kept, served.styles.index("own"))
        assert again.problem is None and again.figures == gate
        assert gate["texture_ratio"] <= gate["at_most"] == 0.5
        thumbnail = await r.client.get("/v1/styles/own/thumbnail")
        assert thumbnail.status_code == 200


async def test_a_learned_style_is_learned_again_only_by_its_key(tmp_path, make_settings,
                                                                photos):
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    body = own_painting(store)
    settings = learn_settings(make_settings, store, photos).model_copy(
        update={"api_keys": [SecretStr("k1"), SecretStr("k2")]})
    photo = images.png(40, 32, seed=4)
    async with running(settings) as r:
        r.client.headers["x-api-key"] = "k1"

        async def learn(name: str, key: str = "k1", **params: str):  # noqa: ANN202
            return await r.client.post("/v1/styles", params={"name": name, **params},
                                       content=body, headers={**PNG, "x-api-key": key})

        async def candy() -> bytes:
            return (await r.client.post("/v1/stylize?style=candy", content=photo,
                                        headers=PNG)).content

        first = await finished(r.client, (await learn("own")).json()["url"])
        assert first["state"] == "done", first["error"]
        before = await candy()
        for answer, code in ((await learn("own"), "style_exists"),
                             (await learn("candy", replace="true"), "style_exists"),
                             (await learn("own", "k2", replace="true"), "not_style_owner")):
            assert answer.json()["error"]["code"] == code
            assert answer.status_code == (403 if code == "not_style_owner" else 409)
        again = await finished(r.client, (await learn("own", replace="true")).json()["url"])
        assert again["state"] == "done", again["error"]
        listed = (await r.client.get("/v1/styles")).json()["styles"]
        assert [s["name"] for s in listed] == ["candy", "own", "udnie"]
        learned = next(s for s in listed if s["name"] == "own")["learned"]
        assert "--replace" in learned["command"] and "owner" not in learned
        kept = ModelStore(store.root).manifest("multistyle").metrics["learned_styles"]["own"]
        assert kept["owner"] == key_id("k1")
        assert await candy() == before


def trainers(photos: Path) -> list[int]:
    """The `python -m train multistyle --add-style` processes running now on `photos`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--add-style" in argv and str(photos).encode() in argv:
            found.append(int(proc.name))
    return found


async def test_a_cancelled_style_job_stops_its_training_and_changes_nothing(
        tmp_path, make_settings, photos):
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    before = {f: (store.root / "multistyle" / f).read_bytes()
              for f in ("model.safetensors", "manifest.json")}
    settings = learn_settings(make_settings, store, photos).model_copy(
        update={"learn_iterations": 100_000, "learn_time_limit_s": 120})
    async with running(settings) as r:
        job = (await r.client.post("/v1/styles?name=stripes", content=painting(),
                                   headers=PNG)).json()

        async def training() -> bool:
            return (await r.client.get(job["url"])).json()["progress"]["done"] >= 25

        await until(training, timeout_s=120, what="the training's first progress")
        assert trainers(photos)
        cancelled = await r.client.delete(job["url"])
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        await until(lambda: not trainers(photos), what="the training process to stop")
        assert (await r.client.get(job["url"])).json()["state"] == "cancelled"
        listed = {s["name"] for s in (await r.client.get("/v1/styles")).json()["styles"]}
        assert listed == {"candy", "udnie"}
    after = {f: (store.root / "multistyle" / f).read_bytes() for f in before}
    assert after == before


async def test_with_redis_every_replica_sharing_the_store_serves_a_learned_style(
        tmp_path, make_settings, photos, redis_url):
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    body = own_painting(store)
    settings = learn_settings(make_settings, store, photos).model_copy(
        update={"redis_url": redis_url, "redis_key_prefix": f"test-learn-{time.time_ns()}:"})
    async with running(settings) as a, running(settings) as b:
        job = (await a.client.post("/v1/styles?name=own", content=body, headers=PNG)).json()
        status = await finished(a.client, job["url"])   # run by either replica: one queue
        assert status["state"] == "done", status["error"]
        for replica in (a, b):
            async def serves(r=replica) -> bool:
                answer = await r.client.post("/v1/stylize?style=own", content=images.png(),
                                             headers=PNG)
                return answer.status_code == 200

            await until(serves, timeout_s=30, what="the learned style on both replicas")


async def test_each_key_has_a_daily_quota_of_styles(tmp_path, make_settings, photos):
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    settings = learn_settings(make_settings, store, photos).model_copy(
        update={"learn_quota_per_day": 1, "api_keys": [SecretStr("k1"), SecretStr("k2")]})
    async with running(settings) as r:
        async def learn(name: str, key: str):  # noqa: ANN202
            return await r.client.post(f"/v1/styles?name={name}", content=painting(),
                                       headers={**PNG, "x-api-key": key})

        first = await learn("one", "k1")
        assert first.status_code == 202
        over = await learn("two", "k1")
        assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
        assert 86000 < int(over.headers["retry-after"]) <= 86400
        other = await learn("two", "k2")                    # another key, its own quota
        assert other.status_code == 202
        for job, key in ((first, "k1"), (other, "k2")):     # no need to train them
            await r.client.delete(job.json()["url"], headers={"x-api-key": key})


async def test_the_quota_is_shared_in_redis(redis_url):
    from redis.asyncio import Redis

    from service.quota import Quota

    client = Redis.from_url(redis_url)
    try:
        prefix = f"test-quota-{time.time_ns()}:"
        replicas = [Quota(2, client, prefix), Quota(2, client, prefix)]
        await replicas[0].take("key:a", "styles")
        await replicas[1].take("key:a", "styles")
        with pytest.raises(errors.QuotaExceeded) as refused:
            await replicas[0].take("key:a", "styles")
        assert 86000 < int(refused.value.headers["Retry-After"]) <= 86400
        await replicas[1].take("key:b", "styles")
    finally:
        await client.aclose()
