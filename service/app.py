"""The FastAPI application: `create_app(settings)` wires services, routes and handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.auth import ApiKeyAuth, KeyRing, document_security
from service.errors import install_handlers
from service.lifecycle import build_services
from service.middleware import LoadShed, RequestContext, RequestLimits
from service.ratelimit import RateLimit
from service.routes import jobs, ops, styles, transform, web
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
* `POST /v1/stylize` also takes `strength=0..1` (a pixel-space blend of the stylised output
  with the input) and `preserve_color=true` (the output's luminance with the input's colours).
* Blends of styles, `style=candy:0.7,udnie:0.3`, run on a multi-style network holding every
  style named (`GET /v1/models` lists its `styles`): it mixes the styles' normalisation
  parameters.
* Images whose output is over the tiling threshold run in overlapping, feathered tiles, so
  memory is bounded by the tile size (e.g. 4096x4096 inputs for style).
* Work a request cannot finish within its time limit (413 `too_slow`) can run as a job:
  `POST /v1/jobs/stylize` and `POST /v1/jobs/superres` take the same parameters and answer 202;
  `GET /v1/jobs/{id}` gives the state and progress, then the result's URL.
* `POST /v1/styles?name=NAME` learns a new style from the painting in the body, as a job, into
  the multi-style network; `GET /v1/styles` lists the styles and where they came from.
* A web page at `/` uploads an image and shows the result; `GET /v1/styles/{name}/thumbnail`
  is a small JPEG of a style's painting.
* Errors are JSON `{"error": {"code": ..., "message": ...}}`.
* When the deployment configures API keys, `/v1/*` needs `Authorization: Bearer KEY` or
  `X-API-Key: KEY` (401 otherwise); a per-key rate limit answers 429 with `Retry-After`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    services = build_services(settings)   # every part, complete; nothing connects yet

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(title="Perceptual transform service", version="1.0.0",
                  description=DESCRIPTION, lifespan=lifespan,
                  # FastAPI's OpenTelemetry hooks, unused here, look up the tracer and meter
                  # providers on every request: 5 % of the event loop's time per request
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.services = services
    app.include_router(transform.router)
    app.include_router(jobs.router)
    app.include_router(styles.router)
    app.include_router(ops.router)
    app.include_router(web.router)              # the page at / and style thumbnails
    app.mount("/static", web.static_files(), name="static")
    install_handlers(app, services.metrics)
    # Added innermost first. A request meets: LoadShed (429 at once when overloaded) ->
    # RequestContext (id, metrics, access log) -> RequestLimits (URL, headers) -> ApiKeyAuth ->
    # RateLimit -> the routes; so a refusal costs no admission slot and no body read, and
    # (but for shedding, which must be cheap) gets its log line and request id.
    if services.limiter is not None:
        app.add_middleware(RateLimit, limiter=services.limiter, metrics=services.metrics)
    api_keys, metrics_key = KeyRing(settings.api_keys), KeyRing(
        [settings.metrics_api_key] if settings.metrics_api_key else [])
    admin_key = KeyRing([settings.admin_api_key] if settings.admin_api_key else [])
    if api_keys or metrics_key or admin_key:
        app.add_middleware(ApiKeyAuth, api_keys=api_keys, metrics_key=metrics_key,
                           admin_key=admin_key, metrics=services.metrics)
    if api_keys:
        document_security(app)
    app.add_middleware(RequestLimits, max_url_bytes=settings.max_url_bytes,
                       max_header_bytes=settings.max_header_bytes, metrics=services.metrics)
    app.add_middleware(RequestContext, metrics=services.metrics)
    app.add_middleware(LoadShed, admission=services.admission, metrics=services.metrics)
    return app
