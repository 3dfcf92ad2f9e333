"""Number formats and markdown tables shared by every document."""

from __future__ import annotations

from report import common


def test_formats():
    assert common.fmt_loss(1234567.4) == "1,234,567"
    assert common.fmt_seconds(0.01234) == "0.012 s"
    assert common.fmt_seconds(12.345) == "12.3 s"
    assert common.fmt_seconds(1234.4) == "1,234 s"
    assert common.fmt_quality(28.4349, 0.81136) == "28.43 / 0.8114"


def test_markdown_table():
    assert common.markdown_table(["a", "b"], [["1", "2"]], "lr") == (
        "| a | b |\n| :--- | ---: |\n| 1 | 2 |")
