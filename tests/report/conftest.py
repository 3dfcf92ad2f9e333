"""The repository root first on sys.path, so that `report` and `tests.helpers` import however
pytest is started: the editable install may predate the report package, and with tests/ on the
path, tests/report would pass for `report` as a namespace package."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
