"""POST /v1/stylize and POST /v1/superres: image in, image out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.deps import (
    OutputDep,
    ServicesDep,
    StyleRequestDep,
    SuperResDep,
    TicketDep,
    read_image,
    unless_disconnected,
)
from service.imaging import INPUT_CONTENT_TYPES, OUTPUT_CONTENT_TYPES
from service.inference import Outcome, OutputOptions, StyleOptions
from service.lifecycle import Services
from service.registry import LoadedModel
from service.schemas import ErrorResponse

router = APIRouter(prefix="/v1", tags=["transform"])

_binary = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY: dict[str, Any] = {"requestBody": {
    "required": True,
    "description": "The image: raw bytes with an image content type, or multipart/form-data "
                   "with the field `image`. PNG, JPEG, WebP, GIF (one frame), BMP or TIFF.",
    "content": {**{t: _binary for t in sorted(INPUT_CONTENT_TYPES)},
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}}}}},
}}
_errors = {
    401: "missing or wrong API key (when the deployment configures keys)",
    400: "undecodable image, malformed body, or a blend no one multi-style network holds",
    404: "unknown style, factor or model", 408: "the body arrived too slowly",
    413: "body or image over the size limit", 414: "path and query string over the limit",
    415: "unsupported content type or animated image", 422: "invalid parameter",
    429: "queue full, too many in flight or over the rate limit (see Retry-After)",
    431: "headers over the limit",
    503: "starting, shutting down or out of memory", 504: "deadline passed before compute",
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The transformed image. Headers: X-Cache (hit|miss), Server-Timing "
                         "(decode, queue, compute, encode), X-Request-ID.",
          "content": {t: _binary for t in OUTPUT_CONTENT_TYPES.values()}},
    **{code: {"model": ErrorResponse, "description": text} for code, text in _errors.items()},
}


@router.post("/stylize", response_class=Response, responses=RESPONSES, openapi_extra=IMAGE_BODY,
             summary="Stylise an image")
async def stylize(ticket: TicketDep, style: StyleRequestDep, options: OutputDep,
                  request: Request, services: ServicesDep) -> Response:
    """Apply the style (or blend of styles) `style` to the image in the body; the output has
    its size. Images over the tiling threshold are stylised in overlapping tiles."""
    return await _transform(request, services, style.model, options, ticket.deadline,
                            style.options)


@router.post("/superres", response_class=Response, responses=RESPONSES, openapi_extra=IMAGE_BODY,
             summary="Upscale an image")
async def superres(ticket: TicketDep, model: SuperResDep, options: OutputDep,
                   request: Request, services: ServicesDep) -> Response:
    """Upscale the image in the body by `factor` with a super-resolution network. Images whose
    output is over the tiling threshold are upscaled in overlapping tiles."""
    return await _transform(request, services, model, options, ticket.deadline)


async def _transform(request: Request, services: Services, model: LoadedModel,
                     options: OutputOptions, deadline: float,
                     style: StyleOptions | None = None) -> Response:
    data = await read_image(request, services.settings.max_body_bytes,
                            services.settings.body_timeout_s)
    outcome = await unless_disconnected(
        request, services.inference.transform(model, data, options, deadline=deadline,
                                              style=style))
    request.state.cache = outcome.cache
    return _image_response(outcome)


def _image_response(outcome: Outcome) -> Response:
    headers = {"X-Cache": outcome.cache, "Cache-Control": "no-store"}
    if outcome.timings_s:
        headers["Server-Timing"] = ", ".join(f"{name};dur={seconds * 1000:.1f}"
                                             for name, seconds in outcome.timings_s.items())
    return Response(outcome.body, media_type=outcome.content_type, headers=headers)
