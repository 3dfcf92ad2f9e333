"""The style table on a small hand-made document: no network runs."""

from __future__ import annotations

from report import style
from tests.helpers.report_docs import style_doc


def test_style_table():
    lines = style.style_table(style_doc()).splitlines()
    assert lines[0] == ("| style | network | Gatys 50 it. | Gatys 300 it. | "
                        "network ÷ Gatys 100 it. (max of 3) | shipped |")
    # the network total, 70,001, is below Gatys at 50 (1,050,001) and at 300 (80,001)
    assert lines[2] == ("| `udnie` | 40,000 / 30,000 (0.250 s) | 150,000 / 900,000 (60.0 s) ✓ | "
                        "60,000 / 20,000 (360 s) ✓ | 0.91 | yes |")
    assert style.style_table(style_doc(passed=False)).endswith("| 1.35 | **no** |")


def test_a_network_above_gatys_gets_a_cross():
    doc = style_doc()
    doc["styles"]["udnie"]["summary"]["gatys"]["300"].update(content=30000.0, style=10000.0)
    assert style.style_table(doc).splitlines()[2].endswith("(360 s) ✗ | 0.91 | yes |")


def test_legend_names_the_gate():
    text = style.style_legend(style_doc())
    assert "at most that of Gatys et al. after 100 iterations on every one of 3" in text
