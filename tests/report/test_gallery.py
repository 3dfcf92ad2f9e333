"""Where the SR crops are taken and how the gallery tables read: no network runs."""

from __future__ import annotations

import numpy as np

from report import gallery
from tests.helpers.report_docs import gallery_index


def test_crop_box_finds_the_detail():
    hr = np.full((64, 64, 3), 128, np.uint8)
    hr[32:48, 16:32] = np.random.default_rng(0).integers(0, 255, (16, 16, 3))
    assert gallery.sr_crop_box(hr, 16) == (32, 16)


def test_gallery_markdown():
    text = gallery.gallery_markdown(gallery_index(), prefix="docs/", width=50)
    assert ('| <img src="docs/gallery/styles/udnie.jpg" width="50" alt="udnie"><br>`udnie` | '
            '<img src="docs/gallery/udnie/chicago.jpg" width="50" alt="udnie chicago"> |') in text
    assert "| image | bicubic | ground truth |" in text
    assert "#### Super-resolution crops, ×4" in text
    assert ('<img src="docs/gallery/sr/b.jpg" width="50" alt="bicubic"><br>sharpness 0.54 | '
            '<img src="docs/gallery/sr/hr.jpg" width="50" alt="ground truth"> |') in text
