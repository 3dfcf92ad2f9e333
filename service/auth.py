"""Who may call: optional API keys, checked before routing, admission or reading a body.

With `api_keys` set, every path but the probes, the API description and the web page (its HTML
and /static files: the page asks the user for a key and sends it with its API calls) needs a key,
sent as
`Authorization: Bearer KEY` or `X-API-Key: KEY`. `/metrics` needs `metrics_api_key` when that
is set (the API keys do not open it: scrapers and clients are different parties), else it is
open like the probes, for a scraper inside the cluster. `/admin/*` (reloading the models) needs
`admin_api_key`; with API keys set and no admin key it is closed to everyone. With no keys
configured (the default, for the embedded local run) nothing is checked.

Keys are compared in constant time: the presented key's sha256 against every configured key's
sha256 with `hmac.compare_digest`, without stopping at a match, so neither the time nor the
answer says which keys exist or how close a guess came. A missing and a wrong key get the same
401. Only the key's id (a prefix of its sha256) is ever logged or used as a rate-limit key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from service import errors
from service.metrics import Metrics

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc", "/"})
STATIC_PREFIX = "/static/"  # a StaticFiles mount: it can only serve the page's own files
METRICS_PATH = "/metrics"
ADMIN_PREFIX = "/admin/"


def is_open(path: str) -> bool:
    """Paths anyone may fetch, key or not."""
    return path in OPEN_PATHS or path.startswith(STATIC_PREFIX)


def key_id(key: str) -> str:
    """A name for a key that is safe to log: 12 hex digits of its sha256."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyRing:
    """A set of keys held as sha256 digests; `match` answers in time independent of which."""

    def __init__(self, keys: Iterable[SecretStr | str]) -> None:
        secrets = [k.get_secret_value() if isinstance(k, SecretStr) else k for k in keys]
        self._digests = [hashlib.sha256(k.encode()).digest() for k in secrets]
        self._ids = [key_id(k) for k in secrets]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, presented: str | None) -> str | None:
        """The id of the key `presented` equals, or None."""
        digest = hashlib.sha256((presented or "").encode()).digest()
        found: str | None = None
        for known, ident in zip(self._digests, self._ids, strict=True):
            if hmac.compare_digest(digest, known) and presented is not None:
                found = ident
        return found


def presented_key(scope: Scope) -> str | None:
    """The key from `Authorization: Bearer KEY`, else from `X-API-Key`."""
    api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key":
            api_key = value.decode("latin-1").strip() or None
    return api_key


class ApiKeyAuth:
    """ASGI middleware: 401 in the JSON envelope for a missing or wrong key; on success the
    key's id goes to `scope["state"]["caller"]` for the rate limiter and the access log."""

    def __init__(self, app: ASGIApp, *, api_keys: KeyRing, metrics_key: KeyRing,
                 metrics: Metrics, admin_key: KeyRing | None = None) -> None:
        self.app = app
        self.api_keys = api_keys
        self.metrics_key = metrics_key
        self.admin_key = admin_key or KeyRing([])
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(ADMIN_PREFIX) and self.api_keys and not self.admin_key:
            await errors.rejection(errors.Unauthorized(), self.metrics)(scope, receive, send)
            return
        ring = (self.metrics_key if path == METRICS_PATH
                else self.admin_key if path.startswith(ADMIN_PREFIX) else self.api_keys)
        if ring:
            caller = ring.match(presented_key(scope))
            if caller is None:
                await errors.rejection(errors.Unauthorized(), self.metrics)(scope, receive, send)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def document_security(app: FastAPI) -> None:
    """Declare the two ways to send a key in the OpenAPI schema, on every protected operation
    (only called when keys are configured: a schema must not ask for keys nobody checks)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer",
                             "description": "Authorization: Bearer KEY"}
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        for path, operations in schema.get("paths", {}).items():
            if path in OPEN_PATHS or path == METRICS_PATH:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
