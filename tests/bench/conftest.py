"""The services the benchmarks start here keep their measured policies and ONNX exports
(under $XDG_CACHE_HOME) in a temporary folder, never the user's ~/.cache, so that no test
depends on what an earlier run left there."""

from __future__ import annotations

import os
import tempfile

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="perceptual-bench-tests-")
