"""The style table on a small hand-made document: no network runs."""

from __future__ import annotations

from report import style
from tests.helpers.report_docs import style_doc


def test_style_table():
    lines = style.style_table(style_doc()).splitlines()
    assert lines[0] == ("| style | network | Gatys 50 it. | Gatys 300 it. | unstyled photo | "
                        "style loss ÷ photo's (max of 3) | shipped |")
    assert lines[2] == ("| `udnie` | 40,000 / 30,000 (0.250 s) | 150,000 / 900,000 (60.0 s) | "
                        "60,000 / 20,000 (360 s) | — / 280,000 | 0.107 | yes |")
    assert style.style_table(style_doc(passed=False)).endswith("| 0.700 | **no** |")
