"""Models swapped while serving (POST /admin/models/reload): added, replaced, removed; a
version that fails its check is refused and the old one serves on."""

from __future__ import annotations

import io
import shutil

import numpy as np
import torch
from PIL import Image

from nets.multistyle_net import MultiStyleNet
from nets.style_net import StyleNet
from service.registry import Registry
from tests.helpers import images
from tests.helpers.models import make_multistyle_store, make_store, own_painting
from tests.helpers.server import running

PNG = {"content-type": "image/png"}


def save_style(store, name: str, seed: int, poison: bool = False) -> None:
    torch.manual_seed(seed)
    net = StyleNet(norm="instance")
    if poison:
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
    store.save(net, name=name, task="style", architecture="style", options={"norm": "instance"})


async def test_models_are_added_replaced_refused_and_removed_while_serving(
        tmp_path, make_settings):
    store = make_store(tmp_path / "store", styles=("udnie",), factors=(4,))
    body = images.png(24, 24, seed=5)
    async with running(make_settings(model_store=store.root, cache_bytes=1 << 20)) as r:
        async def stylize(style: str):
            return await r.client.post(f"/v1/stylize?style={style}", content=body, headers=PNG)

        async def reload() -> dict:
            answer = await r.client.post("/admin/models/reload")
            assert answer.status_code == 200
            return answer.json()

        async def digests() -> dict[str, str]:
            listed = (await r.client.get("/v1/models")).json()
            return {m["name"]: m["digest"] for m in listed["models"]}

        before = await stylize("udnie")
        assert before.status_code == 200
        assert (await stylize("wave")).status_code == 404
        assert await reload() == {"added": [], "replaced": [], "removed": [], "refused": {},
                                  "gates": {}}

        save_style(store, "wave", seed=1)                             # added
        assert (await reload())["added"] == ["wave"]
        assert (await stylize("wave")).status_code == 200

        old = (await digests())["udnie"]
        save_style(store, "udnie", seed=2)                            # replaced
        assert (await reload())["replaced"] == ["udnie"]
        new = (await digests())["udnie"]
        assert new != old and new == store.manifest("udnie").sha256
        after = await stylize("udnie")       # the old version's cached answer is not served
        assert after.status_code == 200 and after.content != before.content

        save_style(store, "udnie", seed=3, poison=True)               # refused
        report = await reload()
        assert report["refused"] == {"udnie": "its output on a test image is not finite"}
        assert (await digests())["udnie"] == new                      # the old one serves on
        listed = (await r.client.get("/v1/models")).json()
        assert listed["refused"]["udnie"]["digest"] == store.manifest("udnie").sha256
        assert (await stylize("udnie")).content == after.content

        save_style(store, "udnie", seed=2)                 # rolled back to what serves
        assert await reload() == {"added": [], "replaced": [], "removed": [], "refused": {},
                                  "gates": {}}
        assert (await r.client.get("/v1/models")).json()["refused"] == {}

        shutil.rmtree(store.root / "wave")                            # removed
        assert (await reload())["removed"] == ["wave"]
        assert (await stylize("wave")).status_code == 404
        for result, n in (("added", 1), ("replaced", 1), ("refused", 1), ("removed", 1)):
            assert await r.metric("service_model_reloads_total", result=result) == n


async def test_reloading_needs_the_admin_key_when_keys_are_set(make_settings):
    async with running(make_settings(models=["udnie"], api_keys=["user"])) as r:
        as_user = await r.client.post("/admin/models/reload", headers={"x-api-key": "user"})
        assert as_user.status_code == 401                 # no admin key: closed to everyone
    async with running(make_settings(models=["udnie"], api_keys=["user"],
                                     admin_api_key="root")) as r:
        as_user = await r.client.post("/admin/models/reload", headers={"x-api-key": "user"})
        assert as_user.status_code == 401
        assert as_user.json()["error"]["code"] == "unauthorized"
        as_admin = await r.client.post("/admin/models/reload",
                                       headers={"authorization": "Bearer root"})
        assert as_admin.status_code == 200


def test_a_style_learned_into_a_network_is_the_only_one_the_gate_checks_again(tmp_path):
    """A style added to a multi-style network changes its own rows only: the reload gate checks
    that style and not the others, which served already. A changed shared weight changes
    every style, and then every style is checked."""
    store = make_multistyle_store(tmp_path / "store", ("candy", "udnie"), singles=())
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[::4] = (200, 40, 40)
    store.save_painting("multistyle", Image.fromarray(stripes), style="udnie")  # not its style
    registry = Registry(store.root, ["multistyle"], "cpu", "auto", policy="fixed")
    registry.load_all()
    own = Image.open(io.BytesIO(own_painting(store)))
    net, manifest = store.load("multistyle")
    grown = net.with_style("own")

    def save(network: MultiStyleNet) -> None:
        store.save(network, name="multistyle", task="style", architecture="multistyle",
                   options={**manifest.options, "styles": network.styles})
        store.save_painting("multistyle", own, style="own")

    save(grown)
    assert registry.reload()["replaced"] == ["multistyle"]
    with torch.no_grad():
        next(grown.parameters()).add_(0.01)
    save(grown)
    refused = registry.reload()["refused"]["multistyle"]
    assert refused.startswith("style udnie: on the probe images its outputs are not like")
