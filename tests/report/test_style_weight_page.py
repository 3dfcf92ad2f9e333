"""docs/style_weight: the table, the contact sheet and the shipped weights, on hand-made input."""

from __future__ import annotations

from PIL import Image

from model_store import ModelStore
from nets.style_net import StyleNet
from report import style_weight


def doc() -> dict:
    check = {"content": 1.0, "style": 2.0, "style_kept": 0.0412}
    return {"iterations": 100, "styles": {
        "candy": {"unstyled_style_loss": 1.513e11, "style_weight": 2.38e-6, "check": check,
                  "shipped": {"model": "candy", "style_weight": 2.5e-6}},
        "feathers": {"unstyled_style_loss": 6.35e10, "style_weight": 5.67e-6, "check": check}}}


def test_table_rows():
    lines = style_weight.style_weight_table(doc()).splitlines()
    assert lines[0] == ("| painting | l_style of the photos | λ_s auto | λ_s shipped | "
                        "shipped ÷ auto | Gatys 100 it.: style loss kept |")
    assert lines[2] == "| `candy` | 1.51e+11 | 2.4e-06 | 2.5e-06 (`candy`) | 1.05 | 0.041 |"
    assert lines[3] == "| `feathers` | 6.35e+10 | 5.7e-06 | — | — | 0.041 |"


def test_contact_sheet_tiles_the_photo_and_each_result(tmp_path):
    tiles = {name: Image.new("RGB", (20, 20), (i * 30, 0, 0))
             for i, name in enumerate(["photo", *(f"s{k}" for k in range(6))])}
    out = tmp_path / "sheet.jpg"
    style_weight.contact_sheet(tiles, out)
    sheet = Image.open(out)
    assert sheet.size == (6 * 20, 2 * (20 + 14))        # 7 tiles in rows of 6
    r, _, _ = sheet.getpixel((20 + 10, 14 + 10))       # second tile: s0
    assert abs(r - 30) < 8


def test_shipped_weights_come_from_the_style_networks_manifests(tmp_path):
    store = ModelStore(tmp_path)
    store.save(StyleNet(), name="wave", task="style", architecture="style", options={},
               training={"config": {"style_image": "/data/styles/the_wave.jpg",
                                    "style_weight": 2e-5}})
    assert style_weight.shipped_weights(store) == {
        "the_wave": {"model": "wave", "style_weight": 2e-5}}
