"""The errors a client can see: each has a stable code, an HTTP status and a rejection reason.

One handler (installed by `install_handlers`) turns every error into the JSON envelope
{"error": {"code": ..., "message": ...}}; anything unexpected becomes a 500 with the same shape.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.metrics import Metrics

log = logging.getLogger("service.errors")


class ServiceError(Exception):
    """Base class; subclasses fix status, code and the `service_rejections_total` reason."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    reason: ClassVar[str] = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidImage(ServiceError):
    status, code, reason = 400, "invalid_image", "bad_request"


class BadRequest(ServiceError):
    status, code, reason = 400, "bad_request", "bad_request"


class Unauthorized(ServiceError):
    """Missing or wrong API key. The message never says which keys exist or how close it was."""

    status, code, reason = 401, "unauthorized", "unauthorized"

    def __init__(self, message: str = "a valid API key is required: send "
                                      "'Authorization: Bearer KEY' or 'X-API-Key: KEY'") -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="api"'})


class UnknownModel(ServiceError):
    status, code, reason = 404, "unknown_model", "not_found"


class CannotBlend(ServiceError):
    """Every style named exists, but no one multi-style network holds them all."""

    status, code, reason = 400, "cannot_blend", "bad_request"


class ClosesConnection(ServiceError):
    """An error after which the connection is not reused: what is left of the request is not
    read."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class PayloadTooLarge(ClosesConnection):
    """The body is over max_body_bytes; the connection is closed rather than read to the end."""

    status, code, reason = 413, "payload_too_large", "too_large"


class RequestTimeout(ClosesConnection):
    """The client sent the body (or the head) too slowly."""

    status, code, reason = 408, "request_timeout", "timeout"


class UrlTooLong(ServiceError):
    status, code, reason = 414, "url_too_long", "too_large"


class HeadersTooLarge(ClosesConnection):
    status, code, reason = 431, "headers_too_large", "too_large"


class ImageTooLarge(ServiceError):
    status, code, reason = 413, "image_too_large", "too_large"


class TooSlow(ServiceError):
    """The predicted compute time alone exceeds the request time limit: no wait would help."""

    status, code, reason = 413, "too_slow", "too_slow"


class UnsupportedMediaType(ServiceError):
    status, code, reason = 415, "unsupported_media_type", "unsupported_media"


class InvalidParameter(ServiceError):
    status, code, reason = 422, "invalid_parameter", "bad_request"


class ClientDisconnected(ServiceError):
    """Nobody reads the response; 499 is only what the access log and metrics show."""

    status, code, reason = 499, "client_disconnected", "client_disconnected"


class QueueFull(ServiceError):
    status, code, reason = 429, "queue_full", "queue_full"


class RateLimited(ServiceError):
    """Over the per-key request rate; Retry-After says when a token is back."""

    status, code, reason = 429, "rate_limited", "rate_limited"


class ComputeFailed(ServiceError):
    status, code, reason = 500, "compute_failed", "compute_failed"


class OutOfMemory(ServiceError):
    status, code, reason = 503, "out_of_memory", "out_of_memory"


class NotReady(ServiceError):
    status, code, reason = 503, "not_ready", "not_ready"


class ShuttingDown(ServiceError):
    status, code, reason = 503, "shutting_down", "draining"


class WouldMissDeadline(ServiceError):
    """Predicted to finish after its deadline because of the time it has waited: retry later."""

    status, code, reason = 503, "would_miss_deadline", "deadline"


class DeadlineExceeded(ServiceError):
    status, code, reason = 504, "deadline_exceeded", "deadline"


class UnknownJob(ServiceError):
    """No such job for this caller: never submitted, expired, or another key's."""

    status, code, reason = 404, "unknown_job", "not_found"


class JobNotDone(ServiceError):
    status, code, reason = 409, "job_not_done", "not_done"


class JobFailed(ServiceError):
    status, code, reason = 409, "job_failed", "not_done"


class JobEnded(ServiceError):
    status, code, reason = 409, "job_ended", "not_done"


class JobQueueFull(ServiceError):
    status, code, reason = 429, "job_queue_full", "queue_full"


class JobStoreUnavailable(ServiceError):
    status, code, reason = 503, "job_store_unavailable", "unavailable"


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def rejection(exc: ServiceError, metrics: Metrics) -> JSONResponse:
    """The envelope for an error raised outside the routes (ASGI middleware), counted as the
    handler below counts it: middleware sits outside FastAPI's exception handling."""
    metrics.rejections.labels(reason=exc.reason).inc()
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "header"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map ServiceError, validation errors, unknown routes and the unexpected to the envelope."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.rejections.labels(reason=exc.reason).inc()
        if exc.status >= 500 and exc.reason in ("internal", "compute_failed"):
            log.error("request failed: %s", exc.message)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejections.labels(reason="bad_request").inc()
        return error_response(422, "invalid_parameter", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error; see the server log")


class StyleExists(ServiceError):
    status, code, reason = 409, "style_exists", "conflict"


class NotStyleOwner(ServiceError):
    """Only the API key that learned a style may learn it again."""

    status, code, reason = 403, "not_style_owner", "forbidden"


class StyleRejected(ServiceError):
    """A learned style failed the reload gate: the store was put back as it was."""

    status, code, reason = 422, "style_rejected", "bad_request"


class QuotaExceeded(ServiceError):
    status, code, reason = 429, "quota_exceeded", "rate_limited"


class LearningUnavailable(ServiceError):
    status, code, reason = 503, "learning_unavailable", "unavailable"
