"""README blocks and docs pages rewritten from hand-made documents: no network runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from report import readme
from tests.helpers.report_docs import gallery_index, style_doc


def test_replace_block_keeps_the_rest():
    text = "intro\n<!-- BEGIN generated:x -->\nold\n<!-- END generated:x -->\noutro\n"
    new = readme.replace_block(text, "x", "new table\n")
    assert new == "intro\n<!-- BEGIN generated:x -->\nnew table\n<!-- END generated:x -->\noutro\n"
    assert readme.read_block(new, "x") == "\nnew table\n"
    with pytest.raises(ValueError, match="generated:y"):
        readme.replace_block(text, "y", "")


def test_readme_command_fills_the_blocks_it_has_documents_for(tmp_path: Path):
    docs = tmp_path / "docs"
    (docs / "gallery").mkdir(parents=True)
    (docs / "style.json").write_text(json.dumps(style_doc()))
    (docs / "gallery" / "index.json").write_text(json.dumps(gallery_index()))
    path = tmp_path / "README.md"
    path.write_text("".join(f"# {n}\n<!-- BEGIN generated:{n} -->\n<!-- END generated:{n} -->\n"
                            for n in readme.BLOCKS))
    readme.run(argparse.Namespace(readme=str(path), docs=str(docs), pages=True,
                                  bench_results=str(tmp_path / "bench")))
    text = path.read_text()
    assert "| `udnie` | 40,000 / 30,000" in readme.read_block(text, "style-table")
    assert 'src="docs/gallery/udnie/chicago.jpg"' in readme.read_block(text, "gallery")
    assert readme.read_block(text, "sr-table") == "\n"  # no sr.json: left as it was
    assert readme.read_block(text, "bench") == "\n"     # no benchmark results either
    assert readme.read_block(text, "learned") == "\n"   # nor learned styles
    assert "| `udnie` | 40,000 / 30,000" in (docs / "style.md").read_text()
    assert (docs / "style.png").stat().st_size > 0
    assert "#### Super-resolution crops, ×4" in (docs / "gallery.md").read_text()
    assert not (docs / "sr.md").exists()
