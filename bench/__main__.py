"""python -m bench {model,...}: each benchmark is a module with main(argv)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"model": "bench.model", "reliability": "bench.reliability",
              "service": "bench.service", "cache": "bench.cache", "styles": "bench.styles",
              "startup": "bench.startup", "live": "bench.live"}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        sys.stderr.write(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]\n")
        return 2
    return importlib.import_module(BENCHMARKS[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
