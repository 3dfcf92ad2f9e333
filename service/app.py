"""The FastAPI application: `create_app(settings)` wires services, routes and handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.errors import install_handlers
from service.lifecycle import build_services
from service.middleware import RequestContext
from service.routes import ops, transform
from service.settings import Settings, get_settings

DESCRIPTION = """
Real-time neural style transfer and super-resolution (Johnson et al. 2016, *Perceptual Losses
for Real-Time Style Transfer and Super-Resolution*), batched on the GPU (CPU without one).

* `POST /v1/stylize?style=NAME` and `POST /v1/superres?factor=4` take an image as the raw body
  (`Content-Type: image/png`, `image/jpeg`, ...) or as the multipart field `image`.
* Output format: `format=png|jpeg|webp`, else the `Accept` header, else PNG; `quality` for
  JPEG and WebP (default 90).
* Inputs: EXIF orientation is applied. Grayscale, palette and CMYK images become RGB; 16-bit
  images are scaled to 8 bits; alpha is carried over to PNG/WebP output (JPEG output is
  composited on white). Animated or multi-page images are refused with 415.
* Errors are JSON `{"error": {"code": ..., "message": ...}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(title="Perceptual transform service", version="1.0.0",
                  description=DESCRIPTION, lifespan=lifespan)
    app.state.services = services
    app.include_router(transform.router)
    app.include_router(ops.router)
    install_handlers(app, services.metrics)
    app.add_middleware(RequestContext, metrics=services.metrics)
    return app
