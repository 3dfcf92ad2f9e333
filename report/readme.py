"""`python -m report readme`: README.md's generated blocks (and docs pages) from docs/*.json.

tests/test_readme_figures.py checks that every number in the blocks matches the manifests, so
a format change needs no new measurement: rerun this command.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from bench import summary as bench_summary
from report import gallery, learned, speed, sr, style, style_weight

BLOCKS = ("sr-table", "style-table", "speed-table", "bench", "learned", "gallery")


def replace_block(text: str, name: str, body: str) -> str:
    """Replace what lies between the BEGIN/END markers of block `name`, markers kept."""
    pattern = re.compile(rf"(<!-- BEGIN generated:{re.escape(name)} -->)(.*?)"
                         rf"(<!-- END generated:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- BEGIN/END generated:{name} --> markers")
    return pattern.sub(lambda m: f"{m.group(1)}\n{body.strip()}\n{m.group(3)}", text, count=1)


def read_block(text: str, name: str) -> str | None:
    m = re.search(rf"<!-- BEGIN generated:{re.escape(name)} -->(.*?)"
                  rf"<!-- END generated:{re.escape(name)} -->", text, re.S)
    return m.group(1) if m else None


def load_doc(docs: Path, rel: str) -> dict[str, Any] | None:
    path = docs / rel
    return json.loads(path.read_text()) if path.is_file() else None


def readme_blocks(docs: Path, bench_results: Path = bench_summary.RESULTS) -> dict[str, str]:
    """The body of each block whose source document exists."""
    def load(rel: str) -> dict[str, Any] | None:
        return load_doc(docs, rel)

    blocks = {}
    if doc := load("sr.json"):
        blocks["sr-table"] = (
            "Y-channel PSNR (dB) / SSIM, border = factor; paper = Johnson et al. Fig. 8 (×4). "
            "The low-resolution inputs are the HR images shrunk with PIL's antialiased bicubic "
            "(like MATLAB's `imresize`, and a user shrinking a photo); "
            + sr.trained_on(doc) + " From `python -m report sr`, details, the paper's "
            "degradation and sharpness in [docs/sr.md](docs/sr.md).\n\n"
            + sr.sr_table(doc))
    if doc := load("style.json"):
        blocks["style-table"] = (style.style_legend(doc) + " Details in [docs/style.md]"
                                 "(docs/style.md).\n\n" + style.style_table(doc))
    if doc := load("speed.json"):
        blocks["speed-table"] = (speed.speed_legend(doc) + " Details in [docs/speed.md]"
                                 "(docs/speed.md).\n\n" + speed.speed_table(doc) + "\n\n"
                                 + speed.reference_speed_table(doc))
    if bench := bench_summary.readme_block(bench_results):
        blocks["bench"] = bench
    if doc := load("learned.json"):
        blocks["learned"] = learned.readme_block(doc)
    if doc := load("gallery/index.json"):
        blocks["gallery"] = (gallery.gallery_markdown(doc, prefix="docs/", width=96)
                             + "\n\nLarger: [docs/gallery.md](docs/gallery.md).")
    return blocks


PAGES = {"sr.json": sr.write_page, "style.json": style.write_page,
         "style_weight.json": style_weight.write_page, "speed.json": speed.write_page,
         "gallery/index.json": gallery.write_page}


def run(args: argparse.Namespace) -> int:
    """README blocks and docs pages from the JSON: a change of format needs no new measurement."""
    docs = Path(args.docs)
    if args.pages:
        for rel, write in PAGES.items():
            if doc := load_doc(docs, rel):
                write(doc, docs)
    path = Path(args.readme)
    text = path.read_text()
    for name, body in readme_blocks(Path(args.docs), Path(args.bench_results)).items():
        text = replace_block(text, name, body)
        print(f"README: {name}")
    path.write_text(text)
    return 0


