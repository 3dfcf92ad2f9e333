"""Styles: GET /v1/styles lists them with their origin; POST /v1/styles learns a new one from a
painting, as a job (service/style_learning.py)."""

from __future__ import annotations

import asyncio
import re
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from service import errors, imaging, style_learning
from service.deps import ServicesDep, TicketDep, read_image
from service.jobs import Job, new_id
from service.lifecycle import Services
from service.ratelimit import caller_of
from service.routes.jobs import SUBMIT_RESPONSES, caller, status
from service.routes.transform import IMAGE_BODY
from service.schemas import ErrorResponse, StyleInfo, StyleList

router = APIRouter(prefix="/v1/styles", tags=["styles"])
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")   # model_store's names: safe as a file name


@router.get("", response_model=StyleList, summary="The styles served, with their origin")
async def list_styles(services: ServicesDep) -> StyleList:
    registry = services.registry
    styles: dict[str, dict[str, Any]] = {}
    for model in registry.models():
        if model.task != "style":
            continue
        learned = model.manifest.metrics.get("learned_styles", {})
        for name in model.styles or [model.name]:
            entry = styles.setdefault(name, {"name": name, "models": [], "origin": "shipped"})
            entry["models"].append(model.name)
            if name in learned:
                entry["origin"] = "learned"
                entry["learned"] = {k: v for k, v in learned[name].items() if k != "owner"}
    return StyleList(styles=[StyleInfo(**styles[n]) for n in sorted(styles)])


LEARN_RESPONSES: dict[int | str, dict[str, Any]] = {**SUBMIT_RESPONSES, **{
    code: {"model": ErrorResponse, "description": text} for code, text in {
        403: "replace=true for a style another API key learned",
        409: "the name is taken (without replace=true, or by a shipped style)"}.items()}}


@router.post("", status_code=202, response_model=None, responses=LEARN_RESPONSES,
             openapi_extra=IMAGE_BODY, summary="Learn a new style from a painting, as a job")
async def learn_style(
    ticket: TicketDep, request: Request, services: ServicesDep,
    name: Annotated[str, Query(min_length=1, max_length=64,
                               description="the new style's name: a-z, 0-9, '_' and '-'")],
    replace: Annotated[bool, Query(description="learn the style NAME again from this painting: "
                                               "a style learned here (not a shipped one), by "
                                               "the API key that learned it")] = False,
) -> JSONResponse:
    """The painting in the body becomes one more style of the multi-style network: a job that
    trains its own scale and shift with every shared weight frozen, then checks it against the
    painting before it serves (`GET /v1/jobs/{id}` for the step, losses and time left)."""
    if not NAME.match(name):
        raise errors.InvalidParameter(f"style name {name!r}: use a-z, 0-9, '_' and '-', "
                                      "starting with a letter or digit")
    if name in services.registry.styles():
        check_replaceable(services, name, replace, caller(request))
    why = style_learning.unavailable(services.learn, [m.name for m in
                                                      services.registry.models()])
    if why is not None:
        raise errors.LearningUnavailable(f"this server cannot learn styles: {why}")
    settings = services.settings
    data = await read_image(request, settings.max_body_bytes, settings.body_timeout_s)
    await asyncio.get_running_loop().run_in_executor(    # an image within the limits, or 4xx
        services.codec_pool, partial(imaging.decode, data, max_pixels=settings.max_pixels,
                                     max_decoded_bytes=settings.max_decoded_bytes))
    await services.learn_quota.take(caller_of(request.scope), "styles learned")
    job = Job(new_id(), "learn-style", {"name": name, "replace": replace}, caller(request))
    body = status(await services.learning.submit(job, data))
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.url})


def check_replaceable(services: Services, name: str, replace: bool, who: str | None) -> None:
    """An existing style may be learned again only when asked (`replace`), if it was learned
    here, and by the API key that learned it (anyone where no keys are set)."""
    if not replace:
        raise errors.StyleExists(f"style {name!r} exists; choose another name, or replace=true "
                                 "to learn a style learned here again")
    base = services.registry.get(services.learn.base)
    learned = base.manifest.metrics.get("learned_styles", {}) if base is not None else {}
    if name not in learned:
        raise errors.StyleExists(f"style {name!r} was not learned here (it shipped): it "
                                 "cannot be replaced; choose another name")
    if learned[name].get("owner") != who:
        raise errors.NotStyleOwner(f"style {name!r} was learned with another API key: only "
                                   "that key may replace it")
