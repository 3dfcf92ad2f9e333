"""The report's table builders and README blocks on small hand-made inputs: no network runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from train import gatys, report


def test_formats():
    assert report.fmt_loss(1234567.4) == "1,234,567"
    assert report.fmt_seconds(0.01234) == "0.012 s"
    assert report.fmt_seconds(12.345) == "12.3 s"
    assert report.fmt_seconds(1234.4) == "1,234 s"
    assert report.fmt_quality(28.4349, 0.81136) == "28.43 / 0.8114"


def test_markdown_table():
    assert report.markdown_table(["a", "b"], [["1", "2"]], "lr") == (
        "| a | b |\n| :--- | ---: |\n| 1 | 2 |")


def sr_doc() -> dict:
    def r(p: float, s: float) -> dict:
        return {"psnr": p, "ssim": s, "images": {}}

    return {
        "models": {"feat4": {"factor": 4, "loss": "feat"}, "pix4": {"factor": 4, "loss": "pixel"},
                   "feat8": {"factor": 8, "loss": "feat"}},
        "results": {"Set5": {"x4": {"bicubic": r(28.0, 0.8), "pix4": r(28.5, 0.82),
                                    "feat4": r(27.0, 0.75)},
                             "x8": {"bicubic": r(24.0, 0.65), "feat8": r(23.456, 0.61234)}}},
        "paper_x4": {"Set5": {"bicubic": [28.43, 0.8114], "pixel": [28.40, 0.8153],
                              "SRCNN": [30.48, 0.8628], "feat": [27.09, 0.7680]}},
    }


def test_sr_table_rows_in_the_papers_order():
    lines = report.sr_table(sr_doc()).splitlines()
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
    text = report.sr_deltas(sr_doc())
    assert "- Set5 x4, `feat4`: -1.00 dB, SSIM -0.0500 (paper's feature loss: -1.34 dB, " \
           "SSIM -0.0434)" in text
    assert "- Set5 x8, `feat8`: -0.54 dB, SSIM -0.0377" in text


def style_doc(passed: bool = True) -> dict:
    def terms(c: float, s: float, t: float) -> dict:
        return {"content": c, "style": s, "tv": 1.0, "seconds": t}

    summary = {"network": terms(40000, 30000, 0.25),
               "gatys": {"50": terms(150000, 900000, 60), "300": terms(60000, 20000, 360.4)},
               "unstyled": {"content": 0.0, "style": 280000.0, "tv": 1.0}}
    return {"machine": {"cpu": "CPU", "cores": 2, "torch": "2", "threads": 2, "gpu": None},
            "settings": {"content": ["chicago"], "size": 256, "iterations": [50, 300],
                         "init": "noise", "threshold": 0.5, "check_images": ["a", "b", "c"],
                         "loss_network": "vgg19"},
            "styles": {"udnie": {"summary": summary,
                                 "check": {"max_ratio": 0.1071 if passed else 0.7,
                                           "passed": passed}}}}


def test_style_table():
    lines = report.style_table(style_doc()).splitlines()
    assert lines[0] == ("| style | network | Gatys 50 it. | Gatys 300 it. | unstyled photo | "
                        "style loss ÷ photo's (max of 3) | shipped |")
    assert lines[2] == ("| `udnie` | 40,000 / 30,000 (0.250 s) | 150,000 / 900,000 (60.0 s) | "
                        "60,000 / 20,000 (360 s) | — / 280,000 | 0.107 | yes |")
    assert report.style_table(style_doc(passed=False)).endswith("| 0.700 | **no** |")


def test_gatys_timing_extrapolates_from_the_median_iteration(monkeypatch):
    seconds = [2.0, 3.0, 7.0, 8.0]  # iteration 3 was slowed down by another process

    def fake(content, style, vgg, iterations, report_at):
        assert list(report_at) == [1, 2, 3, 4]
        return None, [{"iteration": i + 1, "seconds": s} for i, s in enumerate(seconds)]

    monkeypatch.setattr(gatys, "stylize_by_optimisation", fake)
    t = report.gatys_timing(None, None, None, 4, [3, 10])
    assert t["per_iteration_s"] == 1.0  # median of 1, 4, 1
    assert t["totals"]["3"] == {"seconds": 7.0, "measured": True}
    assert t["totals"]["10"] == {"seconds": 2.0 + 9 * 1.0, "measured": False}


def speed_doc() -> dict:
    gatys = {"measured_iterations": 100, "first_iteration_s": 2.0, "per_iteration_s": 1.0,
             "totals": {"100": {"seconds": 101.0, "measured": True},
                        "300": {"seconds": 301.0, "measured": False}}}
    return {"machine": {"cpu": "CPU", "cores": 2, "torch": "2", "threads": 2, "gpu": None},
            "model": "udnie", "runs": 5, "iterations": [100, 300],
            "sizes": {"256": {"gatys": gatys, "network": {"eager_fp32_s": 0.2,
                                                           "service_s": 0.1}}},
            "gpu": {"source": "bench.json", "machine": {"gpu": "GPU", "torch": "2"},
                    "latency_ms": {"256": {"eager_fp32": 2.5012, "fp16_cuda_graph": 0.94}}},
            "paper": report.PAPER_SPEED}


def test_speed_tables():
    doc = speed_doc()
    assert report.speed_table(doc).splitlines()[2] == (
        "| 256×256 | 101 s | ≈301 s (est.) | 0.200 s | 0.100 s | 505× / 1,505× |")
    assert report.reference_speed_table(doc).splitlines()[2] == (
        "| 256×256 | 3.17 s / 9.52 s / 15.86 s | 0.015 s | 2.50 ms | 0.94 ms |")


def test_crop_box_finds_the_detail():
    hr = np.full((64, 64, 3), 128, np.uint8)
    hr[32:48, 16:32] = np.random.default_rng(0).integers(0, 255, (16, 16, 3))
    assert report.sr_crop_box(hr, 16) == (32, 16)


def gallery_index() -> dict:
    return {"size": 320, "crop": 96, "zoom": 2, "bytes": 2**20,
            "contents": [{"name": "chicago", "path": "gallery/content/chicago.jpg"}],
            "styles": [{"name": "udnie", "painting": "gallery/styles/udnie.jpg",
                        "outputs": [{"content": "chicago", "path": "gallery/udnie/chicago.jpg"}]}],
            "sr": [{"image": "Set5/bird", "factor": 4,
                    "tiles": [{"label": "bicubic", "path": "gallery/sr/b.jpg"},
                              {"label": "ground truth", "path": "gallery/sr/hr.jpg"}]}]}


def test_gallery_markdown():
    text = report.gallery_markdown(gallery_index(), prefix="docs/", width=50)
    assert ('| <img src="docs/gallery/styles/udnie.jpg" width="50" alt="udnie"><br>`udnie` | '
            '<img src="docs/gallery/udnie/chicago.jpg" width="50" alt="udnie chicago"> |') in text
    assert "| image | bicubic | ground truth |" in text
    assert "#### Super-resolution crops, ×4" in text


def test_replace_block_keeps_the_rest():
    text = "intro\n<!-- BEGIN generated:x -->\nold\n<!-- END generated:x -->\noutro\n"
    new = report.replace_block(text, "x", "new table\n")
    assert new == "intro\n<!-- BEGIN generated:x -->\nnew table\n<!-- END generated:x -->\noutro\n"
    assert report.read_block(new, "x") == "\nnew table\n"
    with pytest.raises(ValueError, match="generated:y"):
        report.replace_block(text, "y", "")


def test_readme_command_fills_the_blocks_it_has_documents_for(tmp_path: Path):
    docs = tmp_path / "docs"
    (docs / "gallery").mkdir(parents=True)
    (docs / "style.json").write_text(json.dumps(style_doc()))
    (docs / "gallery" / "index.json").write_text(json.dumps(gallery_index()))
    readme = tmp_path / "README.md"
    readme.write_text("".join(f"# {n}\n<!-- BEGIN generated:{n} -->\n<!-- END generated:{n} -->\n"
                              for n in report.BLOCKS))
    report.run_readme(argparse.Namespace(readme=str(readme), docs=str(docs), pages=True,
                                         bench_results=str(tmp_path / "bench")))
    text = readme.read_text()
    assert "| `udnie` | 40,000 / 30,000" in report.read_block(text, "style-table")
    assert 'src="docs/gallery/udnie/chicago.jpg"' in report.read_block(text, "gallery")
    assert report.read_block(text, "sr-table") == "\n"  # no sr.json: left as it was
    assert report.read_block(text, "bench") == "\n"     # no benchmark results either
    assert "| `udnie` | 40,000 / 30,000" in (docs / "style.md").read_text()
    assert (docs / "style.png").stat().st_size > 0
    assert "#### Super-resolution crops, ×4" in (docs / "gallery.md").read_text()
    assert not (docs / "sr.md").exists()
