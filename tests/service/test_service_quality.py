"""The reload gate (service/quality.py): the shipped models pass it; an untrained network, or a
style network held against another painting, does not; a reload refuses such a version; a
multi-style network is checked on the styles whose paintings it keeps."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from model_store import SHIPPED_ROOT, ModelStore
from nets.style_net import StyleNet
from nets.superres_net import SuperResNet
from service import quality
from service.registry import Registry
from tests.helpers.models import make_store
from tests.helpers.server import running

SHIPPED = ModelStore(SHIPPED_ROOT)


@pytest.fixture(scope="module")
def shipped() -> dict:
    models = Registry(SHIPPED_ROOT, [], "cpu", "float32", policy="fixed").load_all()
    return {m.name: m for m in models}


def test_every_shipped_model_passes_with_the_paintings_it_keeps(shipped):
    for name, model in shipped.items():
        if model.styles:       # the multi-style network: those of its styles that pass
            kept = {s: SHIPPED.painting(name, s) for s in model.styles}
            paintings = {s: p for s, p in kept.items() if p is not None}
            assert set(paintings) == {"udnie", "starry_night", "the_wave"}
        else:
            paintings = {name: SHIPPED.painting(name)} if model.task == "style" else {}
            assert None not in paintings.values(), name
        verdict = quality.check(model, paintings)
        assert verdict.problem is None, name
        if model.task == "superres":     # the figures it passed on
            assert verdict.figures["psnr_y_db"] > verdict.figures["bicubic_psnr_y_db"], name
        else:
            assert set(verdict.figures) == set(paintings), name
            assert all(0 <= f["texture_ratio"] <= 0.5 for f in verdict.figures.values()), name


def test_a_style_network_against_another_painting_fails(shipped):
    verdict = quality.style_gate(shipped["candy"], SHIPPED.painting("udnie"))
    assert verdict.problem is not None and "not like its painting" in verdict.problem
    assert verdict.figures["texture_ratio"] > 0.5
    assert f"keep {verdict.figures['texture_ratio']:.2f} of" in verdict.problem


def test_untrained_networks_fail(shipped):
    model = shipped["udnie"]
    trained = model.module
    torch.manual_seed(0)
    model.module = StyleNet(norm="instance", upsample="resize_conv", padding="reflect").eval()
    try:
        assert quality.style_gate(model, SHIPPED.painting("udnie")).problem is not None
    finally:
        model.module = trained
    sr = shipped["sr_x4"]
    trained = sr.module
    sr.module = SuperResNet(4, norm="none").eval()
    try:
        verdict = quality.superres_gate(sr)
        assert verdict.problem is not None and "worse than bicubic" in verdict.problem
        assert verdict.figures["psnr_y_db"] <= verdict.figures["bicubic_psnr_y_db"]
    finally:
        sr.module = trained


async def test_a_reload_refuses_a_version_that_fails_the_gate(tmp_path, make_settings):
    store = make_store(tmp_path / "store", styles=(), factors=())
    shutil.copytree(SHIPPED_ROOT / "sr_x4", store.root / "sr_x4")
    async with running(make_settings(model_store=store.root, models=[])) as r:
        torch.manual_seed(0)
        store.save(SuperResNet(4, norm="none"), name="sr_x4", task="superres",
                   architecture="superres", options={"factor": 4, "norm": "none"}, factor=4)
        shutil.copytree(SHIPPED_ROOT / "udnie", store.root / "udnie")
        answer = (await r.client.post("/admin/models/reload")).json()
        assert answer["added"] == ["udnie"]                   # shipped, with its painting
        assert answer["gates"]["udnie"]["udnie"]["texture_ratio"] <= 0.5
        sr_x4 = answer["gates"]["sr_x4"]
        assert sr_x4["psnr_y_db"] <= sr_x4["bicubic_psnr_y_db"]
        assert "worse than bicubic" in answer["refused"]["sr_x4"]
        listed = (await r.client.get("/v1/models")).json()
        assert {m["name"] for m in listed["models"]} == {"sr_x4", "udnie"}
        served = r.services.registry.get("sr_x4").digest
        assert served == SHIPPED.manifest("sr_x4").sha256     # the old version serves on
        thumbnail = await r.client.get("/v1/styles/udnie/thumbnail")
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"


def test_a_multistyle_network_is_checked_on_the_styles_it_keeps_paintings_of(shipped):
    model = shipped["multistyle"]
    udnie, candy = model.styles.index("udnie"), model.styles.index("candy")
    assert quality.style_gate(model, SHIPPED.painting("udnie"), udnie).problem is None
    assert quality.check(model, {"udnie": SHIPPED.painting("udnie")}).problem is None
    problem = quality.check(model, {"udnie": SHIPPED.painting("candy")}).problem
    assert problem is not None and problem.startswith("style udnie: ")
    assert quality.style_gate(model, SHIPPED.painting("udnie"), candy).problem is not None


def test_psnr_is_on_the_y_channel_by_hand():
    a = torch.zeros(1, 3, 10, 10)
    b = a.clone()
    b[..., 5, 5] = 1.0            # white against black: Y 235 against 16, 219 levels
    # one pixel of the 8 x 8 inside the 1-pixel border: MSE 219^2 / 64
    assert quality._psnr(a, b, 1) == pytest.approx(10 * math.log10(255**2 * 64 / 219**2))
    assert quality._psnr(a, a, 1) == float("inf")
