"""Response bodies, so that the OpenAPI page documents them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. unknown_model")
    message: str = Field(description="what is wrong, for people")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelInfo(BaseModel):
    name: str
    task: str = Field(description="style or superres")
    factor: int | None = Field(description="super-resolution factor (null for style)")
    device: str
    dtype: str
    digest: str = Field(description="sha256 of the weights")
    metrics: dict[str, Any] = Field(description="evaluation results from the manifest")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="starting, ready, draining or failed")
    models: int
    error: str | None = None
