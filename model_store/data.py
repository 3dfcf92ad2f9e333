"""Where the shared data lives: the style paintings, content images, training photos and the
Set5/Set14 super-resolution sets (read-only, never copied into the repository).

One setting for every part that reads it (training defaults, evaluation, reports, benchmarks,
the service's thumbnails): the environment variable PERCEPTUAL_DATA, by default the folder
`shared/data` beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("PERCEPTUAL_DATA") or REPO.parent / "shared" / "data")
