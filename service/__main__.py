"""`python -m service [--host H] [--port P] [--workers N] [--remeasure]`: serve with uvicorn;
SIGTERM drains, then exits 0. With several workers this process supervises them
(service/workers.py)."""

from __future__ import annotations

import argparse
import sys

from service import workers
from service.logs import configure_logging
from service.server import serve
from service.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="bind address (default: SERVICE_HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: SERVICE_PORT or 8000)")
    parser.add_argument("--workers", type=int, help="HTTP worker processes (default: "
                                                    "SERVICE_WORKERS or 1)")
    parser.add_argument("--remeasure", action="store_true", default=None,
                        help="measure every model's policy even when the stored one matches")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = get_settings(**overrides)
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return workers.supervise(settings, overrides)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
