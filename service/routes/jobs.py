"""Jobs: POST /v1/jobs/stylize and /v1/jobs/superres (the synchronous routes' parameters),
answered 202 at once; GET /v1/jobs/{id} for the state and progress, then .../result; DELETE
cancels."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from service import errors, image_jobs
from service.deps import (
    OutputDep,
    ServicesDep,
    StyleRequestDep,
    SuperResDep,
    TicketDep,
    read_image,
)
from service.imaging import OUTPUT_CONTENT_TYPES
from service.inference import OutputOptions, StyleOptions
from service.job_runner import JobRunner
from service.jobs import ID_PATTERN, Job
from service.lifecycle import Services
from service.registry import LoadedModel
from service.routes.transform import IMAGE_BODY
from service.schemas import ErrorBody, ErrorResponse, JobProgress, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="the id POST answered")]
_errors = {
    400: "undecodable image or malformed body", 401: "missing or wrong API key",
    404: "unknown style, factor or model", 413: "body or image over the size limit, or "
    "predicted to take longer than the job time limit", 415: "unsupported content type",
    422: "invalid parameter", 429: "the job queue is full (see Retry-After)",
    503: "starting, shutting down, or the job store is unavailable"}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobStatus, "description": "queued; `Location` is the job's URL"},
    **{code: {"model": ErrorResponse, "description": text} for code, text in _errors.items()},
}


@router.post("/stylize", status_code=202, response_model=JobStatus, responses=SUBMIT_RESPONSES,
             openapi_extra=IMAGE_BODY, summary="Stylise an image, as a job")
async def stylize_job(ticket: TicketDep, style: StyleRequestDep, options: OutputDep,
                      request: Request, services: ServicesDep) -> JSONResponse:
    """As `POST /v1/stylize`, for images that take longer than a request may (the job time
    limit instead of the request's)."""
    return await _submit(request, services, "stylize", style.model, options, style.options)


@router.post("/superres", status_code=202, response_model=JobStatus, responses=SUBMIT_RESPONSES,
             openapi_extra=IMAGE_BODY, summary="Upscale an image, as a job")
async def superres_job(ticket: TicketDep, model: SuperResDep, options: OutputDep,
                       request: Request, services: ServicesDep) -> JSONResponse:
    """As `POST /v1/superres`, for images that take longer than a request may."""
    return await _submit(request, services, "superres", model, options, None)


@router.get("/{job_id}", response_model=JobStatus, summary="A job's state and progress",
            responses={404: {"model": ErrorResponse, "description": "unknown or expired job"}})
async def job_status(job_id: JobId, request: Request, services: ServicesDep) -> JobStatus:
    runner = await _runner_of(services, job_id, caller(request))
    return status(await runner.get(job_id, caller(request)))


@router.delete("/{job_id}", response_model=JobStatus, summary="Cancel a job",
               responses={404: {"model": ErrorResponse, "description": "unknown or expired job"},
                          409: {"model": ErrorResponse, "description": "it has ended"}})
async def cancel_job(job_id: JobId, request: Request, services: ServicesDep) -> JobStatus:
    """A queued job leaves the queue; a running one stops at its next heartbeat (a third of
    SERVICE_JOB_LEASE_S), a style being learned with its training process, the store as it
    was."""
    runner = await _runner_of(services, job_id, caller(request))
    return status(await runner.cancel(job_id, caller(request)))


@router.get("/{job_id}/result", response_class=Response, summary="A finished job's output",
            responses={200: {"description": "the image",
                             "content": {t: {} for t in OUTPUT_CONTENT_TYPES.values()}},
                       404: {"model": ErrorResponse, "description": "unknown or expired job"},
                       409: {"model": ErrorResponse,
                             "description": "not done yet (Retry-After), or failed"}})
async def job_result(job_id: JobId, request: Request, services: ServicesDep) -> Response:
    runner = await _runner_of(services, job_id, caller(request))
    result = await runner.result(job_id, caller(request))
    return Response(result.body, media_type=result.content_type,
                    headers={"Cache-Control": "no-store"})


async def _submit(request: Request, services: Services, kind: str, model: LoadedModel,
                  options: OutputOptions, style: StyleOptions | None) -> JSONResponse:
    data = await read_image(request, services.settings.max_body_bytes,
                            services.settings.body_timeout_s)
    job = await image_jobs.prepare(services.inference, kind, model, data, options, style,
                                   caller(request), timeout_s=services.settings.job_timeout_s)
    body = status(await services.jobs.submit(job, data))
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.url})


async def _runner_of(services: Services, job_id: str, who: str | None) -> JobRunner:
    """The runner holding the job: image jobs, or styles being learned."""
    for runner in (services.jobs, services.learning):
        try:
            await runner.get(job_id, who)
        except errors.UnknownJob:
            continue
        return runner
    raise errors.UnknownJob(f"no job {job_id} (unknown, or expired)")


def caller(request: Request) -> str | None:
    """The API key's id (service/auth.py); None where no keys are configured."""
    return getattr(request.state, "caller", None)


def status(job: Job) -> JobStatus:
    url = f"/v1/jobs/{job.id}"
    return JobStatus(
        id=job.id, kind=job.kind, state=job.state,
        progress=JobProgress(done=job.done, total=job.total), created=_iso(job.created) or "",
        started=_iso(job.started), finished=_iso(job.finished), attempts=job.attempts,
        detail=job.detail,
        error=ErrorBody(code=job.error["code"], message=job.error["message"])
        if job.error else None,
        url=url, result=f"{url}/result" if job.state == "done" else None)


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") if t else None
