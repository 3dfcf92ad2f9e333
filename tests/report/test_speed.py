"""Gatys' extrapolated timings and the speed tables, on fakes and a hand-made document."""

from __future__ import annotations

from report import speed
from tests.helpers.report_docs import speed_doc
from train import gatys


def test_gatys_timing_extrapolates_from_the_median_iteration(monkeypatch):
    seconds = [2.0, 3.0, 7.0, 8.0]  # iteration 3 was slowed down by another process

    def fake(content, style, vgg, iterations, style_weight, report_at):
        assert list(report_at) == [1, 2, 3, 4] and style_weight == 1e-5
        return None, [{"iteration": i + 1, "seconds": s} for i, s in enumerate(seconds)]

    monkeypatch.setattr(gatys, "stylize_by_optimisation", fake)
    t = speed.gatys_timing(None, None, None, 4, [3, 10], 1e-5)
    assert t["per_iteration_s"] == 1.0  # median of 1, 4, 1
    assert t["totals"]["3"] == {"seconds": 7.0, "measured": True}
    assert t["totals"]["10"] == {"seconds": 2.0 + 9 * 1.0, "measured": False}


def test_speed_tables():
    doc = speed_doc()
    assert speed.speed_table(doc).splitlines()[2] == (
        "| 256×256 | 101 s | ≈301 s (est.) | 0.200 s | 0.100 s | 505× / 1,505× |")
    # the GPU: the fastest of the paths the service runs, not the bare graph replay (0.94)
    assert speed.reference_speed_table(doc).splitlines()[2] == (
        "| 256×256 | 3.17 s / 9.52 s / 15.86 s | 0.015 s | `fp16_graphs` 1.02 ms |")
    del doc["gpu"]["service_paths"]    # a GPU run of benchmark-only paths: not quoted
    assert speed.reference_speed_table(doc).splitlines()[2] == (
        "| 256×256 | 3.17 s / 9.52 s / 15.86 s | 0.015 s |")
