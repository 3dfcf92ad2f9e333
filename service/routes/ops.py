"""Operational routes: liveness, readiness, metrics, the model list and reloading it."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import port_readiness
from service.admission import Phase
from service.deps import ServicesDep
from service.schemas import (
    ErrorResponse,
    Health,
    ModelInfo,
    ModelList,
    PolicyInfo,
    Readiness,
    RefusedModel,
    ReloadReport,
)

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness",
            responses={503: {"model": Readiness,
                             "description": "starting, draining, or failed (a model did not "
                                            "load, or the device failed a health forward)"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 once every model is loaded and warmed up and the device runs a tiny forward pass
    (in every worker, when there are several); 503 while starting, while draining, and once
    failed."""
    await services.check_device()
    admission = services.admission     # the one owner of the phase
    body = Readiness(status=str(admission.phase), models=len(services.registry.models()),
                     error=admission.error)
    ready, workers = port_readiness.workers_ready(), services.settings.workers
    if admission.phase is Phase.READY and ready is not None and ready < workers:
        body.status, body.error = str(Phase.STARTING), f"{ready} of {workers} workers are ready"
    status = 200 if body.status == Phase.READY else 503
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}},
                       401: {"model": ErrorResponse,
                             "description": "missing or wrong key, when a metrics key is set"}})
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, tags=["transform"],
            summary="The loaded models", responses={
                401: {"model": ErrorResponse,
                      "description": "missing or wrong API key (when keys are configured)"},
                429: {"model": ErrorResponse, "description": "over the rate limit"}})
async def list_models(services: ServicesDep) -> ModelList:
    return ModelList(models=[
        ModelInfo(name=m.name, task=m.task, factor=m.manifest.factor, styles=list(m.styles),
                  device=str(m.device),
                  dtype=m.dtype_name, digest=m.digest, metrics=m.manifest.metrics,
                  policy=PolicyInfo(**m.policy.as_dict(), lanes=services.registry.lanes,
                                    threads=services.registry.threads))
        for m in services.registry.models()],
        refused={name: RefusedModel(**r) for name, r in services.registry.refused.items()})


@router.post("/admin/models/reload", response_model=ReloadReport,
             summary="Pick up models added, replaced or removed in the store", responses={
                 401: {"model": ErrorResponse,
                       "description": "missing or wrong admin key (when keys are configured)"}})
async def reload_models(services: ServicesDep) -> ReloadReport:
    """Each new version is loaded, warmed up and checked before it replaces the old one in
    one step; one that fails is refused (`refused` here and in /v1/models, a log line, the
    metric `service_model_reloads_total{result="refused"}`) and the old version serves on.
    Cached results are keyed by the weights' digest: the old version's are never served for
    the new one."""
    return ReloadReport(**await services.reload_models())
