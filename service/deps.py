"""FastAPI dependencies: admission, model (and style) lookup, output options, and the request
body.

All are `async def`, though none awaits: FastAPI runs a plain `def` dependency on its thread
pool, a thread hop (a few hundred microseconds) for each on every request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, Header, Query, Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from service import errors, styles
from service.admission import Ticket
from service.imaging import INPUT_CONTENT_TYPES
from service.inference import OutputOptions, StyleOptions
from service.lifecycle import Services
from service.registry import LoadedModel
from service.styles import StyleChoice

T = TypeVar("T")
DEFAULT_QUALITY = 90
_ACCEPTED = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp",
             "image/*": "png", "*/*": "png"}


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def admit(request: Request, services: ServicesDep) -> AsyncIterator[Ticket]:
    """The admission's answer (service/admission.py): 503 while starting or draining, 429
    while overloaded; else the request counts as in flight until it is answered.

    A full backlog (bodies read and not yet answered, batch queue included) refuses here too,
    before the body is read or decoded: under overload a 429 then costs neither the upload's
    memory nor a decode. The batcher still checks its own queue."""
    with services.admission.admitted() as ticket:
        request.state.ticket = ticket    # read_image counts it in the backlog
        yield ticket


TicketDep = Annotated[Ticket, Depends(admit)]


STYLE_DESCRIPTION = (
    "a style name (see GET /v1/models: the single-style models and the `styles` of the "
    "multi-style ones), or a blend `name:weight,name:weight,...` such as `candy:0.7,udnie:0.3`: "
    "non-negative weights, normalised to sum to 1 (a weight left out counts 1); a blend runs "
    "on one multi-style network holding every style named, mixing their normalisation "
    "parameters")


async def style_choice(
    request: Request, services: ServicesDep,
    style: Annotated[str, Query(min_length=1, max_length=512, description=STYLE_DESCRIPTION)],
) -> StyleChoice:
    """The network (and style weights) for `style`; 422, 404 or 400 as service/styles.py
    says."""
    settings = services.settings
    weights = styles.parse(style, settings.max_blend_styles)
    choice = styles.choose(services.registry, weights, settings.style_backend)
    request.state.model = choice.model.name
    return choice


async def superres_model(
    request: Request, services: ServicesDep,
    factor: Annotated[int, Query(ge=1, le=64, description="upscaling factor, e.g. 4 or 8")],
    model: Annotated[str | None, Query(min_length=1, max_length=64,
                                       description="pick one of several models "
                                                   "for the factor")] = None,
) -> LoadedModel:
    candidates = services.registry.superres(factor)
    if not candidates:
        available = ", ".join(map(str, services.registry.factors())) or "none"
        raise errors.UnknownModel(f"no super-resolution model for factor {factor}; "
                                  f"available factors: {available}")
    if model is None:
        chosen = candidates[0]
    else:
        matches = [m for m in candidates if m.name == model]
        if not matches:
            names = ", ".join(m.name for m in candidates)
            raise errors.UnknownModel(f"no super-resolution model {model!r} for factor "
                                      f"{factor}; available: {names}")
        chosen = matches[0]
    request.state.model = chosen.name
    return chosen


async def output_options(
    format: Annotated[Literal["png", "jpeg", "jpg", "webp"] | None, Query(
        description="output format; default from the Accept header, else png")] = None,
    quality: Annotated[int | None, Query(ge=1, le=100,
                                         description="jpeg/webp quality (default 90)")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> OutputOptions:
    fmt = format or negotiate(accept)
    return OutputOptions("jpeg" if fmt == "jpg" else fmt, quality or DEFAULT_QUALITY)


def negotiate(accept: str | None) -> str:
    """The supported image type the Accept header prefers most (png when it names none)."""
    best, best_q = "png", -1.0
    for item in (accept or "").split(","):
        mime, *params = (p.strip() for p in item.split(";"))
        fmt = _ACCEPTED.get(mime.lower())
        if fmt is None:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q and q > 0:
            best, best_q = fmt, q
    return best


StyleDep = Annotated[StyleChoice, Depends(style_choice)]


@dataclass(frozen=True)
class StyleRequest:
    model: LoadedModel
    options: StyleOptions


async def style_request(
    choice: StyleDep,
    strength: Annotated[float, Query(
        ge=0, le=1, allow_inf_nan=False,
        description="how much of the style, 0..1: a pixel-space blend "
                    "strength * stylised + (1 - strength) * input")] = 1.0,
    preserve_color: Annotated[bool, Query(
        description="keep the input's colours: the output's luminance with the input's "
                    "chroma (YIQ), as in Gatys et al. 2016")] = False,
) -> StyleRequest:
    """The network and the style options of a stylize request (synchronous or a job)."""
    return StyleRequest(choice.model, StyleOptions(strength=strength,
                                                   preserve_color=preserve_color,
                                                   mix=choice.mix))


StyleRequestDep = Annotated[StyleRequest, Depends(style_request)]
SuperResDep = Annotated[LoadedModel, Depends(superres_model)]
OutputDep = Annotated[OutputOptions, Depends(output_options)]


async def read_image(request: Request, max_body_bytes: int,
                     timeout_s: float | None = None) -> bytes:
    """The image bytes from a raw image/* body or the multipart field `image`.

    The content type and the declared length are checked before reading; the body is read up
    to `max_body_bytes` and no further, and must arrive within `timeout_s` (uvicorn has no body
    read timeout: a client trickling bytes would hold its admission slot forever).
    """
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    if mime != "multipart/form-data" and mime not in INPUT_CONTENT_TYPES:
        raise errors.UnsupportedMediaType(
            f"content type {mime or '(none)'!r} is not supported; send the image as "
            f"{', '.join(sorted(INPUT_CONTENT_TYPES))} or multipart/form-data field 'image'")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise errors.BadRequest("invalid Content-Length")
        if int(declared) > max_body_bytes:
            raise errors.PayloadTooLarge(f"the body is {declared} bytes; "
                                         f"the limit is {max_body_bytes}")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    raise errors.PayloadTooLarge(f"the body is over the limit of "
                                                 f"{max_body_bytes} bytes")
    except ClientDisconnect:
        raise errors.ClientDisconnected("the client went away while sending") from None
    except TimeoutError:
        raise errors.RequestTimeout(f"the body did not arrive within {timeout_s:g} s "
                                    f"({len(body)} bytes received)") from None
    _enter_backlog(request)
    if mime == "multipart/form-data":
        return _multipart_image(content_type, bytes(body))
    return bytes(body)


def _enter_backlog(request: Request) -> None:
    """Count the admitted request in the backlog from now until `admit` lets it go."""
    ticket: Ticket | None = getattr(request.state, "ticket", None)
    if ticket is not None:
        services: Services = request.app.state.services
        services.admission.body_read(ticket)


def _multipart_image(content_type: str, body: bytes) -> bytes:
    """The `image` part of a multipart body, parsed in memory (never through files).

    Not Starlette's `request.form(max_files=1, max_part_size=...)` (checked on 1.10), which
    would change limits and answers: it spools a file part over 1 MB to a temporary file on
    disk; `max_files` counts every file part, so an extra file field, or a second `image`,
    gets 400 "Too many files" (here: ignored, and 422); a cut-off upload parses without an
    error, its last part dropped (here: 400); a non-file `image` part becomes a str capped by
    `max_part_size`, and loses its content type (here: bytes up to the body limit, and 415);
    its errors are a bare 400 `HTTPException`, not our codes. It also reads the stream
    itself, so it cannot run after `read_image`'s bounded, timed read.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise errors.BadRequest("multipart/form-data without a boundary")
    parts: list[tuple[dict[str, str], bytearray]] = []
    field_name: list[bytes] = []
    field_value: list[bytes] = []

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        field_value.append(data[start:end])

    def on_header_end() -> None:
        name = b"".join(field_name).decode("latin-1").lower()
        parts[-1][0][name] = b"".join(field_value).decode("latin-1")
        field_name.clear()
        field_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    ended: list[bool] = []
    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_part_data": on_part_data, "on_end": lambda: ended.append(True)})
        parser.write(body)
        parser.finalize()
    except Exception as e:
        raise errors.BadRequest(f"malformed multipart body: {e}") from None
    if not ended:   # a cut-off upload: its last part may be cut off too
        raise errors.BadRequest("malformed multipart body: no closing boundary")
    images = [(headers, data) for headers, data in parts
              if parse_options_header(headers.get("content-disposition", ""))[1].get(b"name")
              == b"image"]
    if not images:
        raise errors.InvalidParameter("the multipart body has no field named 'image'")
    if len(images) > 1:
        raise errors.InvalidParameter(f"the multipart body has {len(images)} fields named "
                                      "'image'; send one")
    headers, data = images[0]
    part_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if part_type and part_type != "application/octet-stream" \
            and part_type not in INPUT_CONTENT_TYPES:
        raise errors.UnsupportedMediaType(
            f"the image part has content type {part_type!r}; send an image")
    return bytes(data)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (after the body was read)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise errors.ClientDisconnected("the client went away before the response was ready")
