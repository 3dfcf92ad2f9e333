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
