"""The SR table and deltas on a small hand-made document: no network runs."""

from __future__ import annotations

from report import sr
from tests.helpers.report_docs import sr_doc


def test_sr_table_rows_in_the_papers_order():
    lines = sr.sr_table(sr_doc()).splitlines()
    assert lines[0] == "| method | factor | Set5 here | Set5 paper |"
    assert lines[2:] == [
        "| bicubic | ×4 | 28.00 / 0.8000 | 28.43 / 0.8114 |",
        "| `pix4` (pixel loss) | ×4 | 28.50 / 0.8200 | 28.40 / 0.8153 |",
        "| SRCNN (paper only) | ×4 | — | 30.48 / 0.8628 |",
        "| `feat4` (feature loss) | ×4 | 27.00 / 0.7500 | 27.09 / 0.7680 |",
        "| bicubic | ×8 | 24.00 / 0.6500 | — |",
        "| `feat8` (feature loss) | ×8 | 23.46 / 0.6123 | — |",
    ]


def test_sr_deltas_against_bicubic_and_the_paper():
    text = sr.sr_deltas(sr_doc())
    assert "- Set5 x4, `feat4`: -1.00 dB, SSIM -0.0500 (paper's feature loss: -1.34 dB, " \
           "SSIM -0.0434)" in text
    assert "- Set5 x8, `feat8`: -0.54 dB, SSIM -0.0377" in text


def test_sharpness_table_per_method_and_factor():
    lines = sr.sharpness_table(sr_doc()).splitlines()
    assert lines[0] == "| method | factor | Set5 |"
    assert lines[2:5] == ["| bicubic | ×4 | 0.61 |", "| `feat4` (feature loss) | ×4 | 0.93 |",
                          "| `pix4` (pixel loss) | ×4 | 0.70 |"]


def test_degradation_table_shows_both_inputs_and_what_each_model_was_trained_on():
    lines = sr.degradation_table(sr_doc()).splitlines()
    assert lines[0] == ("| method | factor | trained on | Set5, LR by PIL bicubic "
                        "| Set5, LR by paper's blur + bicubic |")
    assert lines[2:5] == [
        "| bicubic | ×4 | — | 28.00 / 0.8000 | 27.00 / 0.7000 |",
        "| `feat4` | ×4 | paper's blur + bicubic | 27.00 / 0.7500 | 28.00 / 0.8000 |",
        "| `pix4` | ×4 | PIL bicubic | 28.50 / 0.8200 | 27.50 / 0.7200 |"]
    assert lines[-1] == "| `feat8` | ×8 | paper's blur + bicubic | 23.46 / 0.6123 | — |"


def test_trained_on_names_each_degradation_once():
    assert sr.trained_on(sr_doc()) == ("trained on paper's blur + bicubic: `feat4`, `feat8`; "
                                       "PIL bicubic: `pix4`.")
