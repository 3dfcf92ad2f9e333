"""Response bodies, so that the OpenAPI page documents them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. unknown_model")
    message: str = Field(description="what is wrong, for people")


class ErrorResponse(BaseModel):
    error: ErrorBody


class SizePolicyInfo(BaseModel):
    side: int = Field(description="input side measured (square); requests use the nearest by "
                                  "pixel count; 0 = any size (nothing measured)")
    path: str = Field(description="execution path, as named by `python -m bench model`")
    max_batch: int = Field(description="largest batch the batcher forms")
    per_image_ms: dict[str, float] = Field(description="batch size -> forward ms per image")
    path_ms: dict[str, float] = Field(description="path -> batch-1 forward ms")
    timings: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="path -> batch size -> forward ms per image: every "
                                          "(path, batch) the policy timed")


class PolicyInfo(BaseModel):
    """How the model runs on this device (SERVICE_BATCH_POLICY)."""

    source: str = Field(description="measured, shared with MODEL (same architecture), fixed")
    sizes: list[SizePolicyInfo]
    default: SizePolicyInfo
    lanes: int = Field(description="forward passes at once on the device (all models)")
    threads: int = Field(description="CPU threads, split between the lanes")
    errors: dict[str, float] = Field(description="path -> max difference from float32, grey "
                                                 "levels of 255, on a test image")
    rejected: list[str] = Field(description="paths over one grey level")
    lanes_images_per_s: dict[str, float] = Field(description="lanes -> images/s measured")
    warmup_s: float


class ModelInfo(BaseModel):
    name: str
    task: str = Field(description="style or superres")
    factor: int | None = Field(description="super-resolution factor (null for style)")
    styles: list[str] = Field(
        default_factory=list, description="the styles a multi-style network holds, in the order "
                                          "of its weights: request one by name, or blend them "
                                          "(`style=a:0.7,b:0.3`); empty for other models")
    device: str
    dtype: str
    digest: str = Field(description="sha256 of the weights")
    metrics: dict[str, Any] = Field(description="evaluation results from the manifest")
    policy: PolicyInfo | None = Field(None, description="the batch policy chosen at warm-up")


class RefusedModel(BaseModel):
    digest: str = Field(description="sha256 of the version refused ('' if it could not be read)")
    reason: str


class ModelList(BaseModel):
    models: list[ModelInfo]
    refused: dict[str, RefusedModel] = Field(
        default_factory=dict, description="versions found in the store that failed their check "
                                          "at a reload; the previous version (if any) serves")


class ReloadReport(BaseModel):
    added: list[str]
    replaced: list[str]
    removed: list[str]
    refused: dict[str, str] = Field(description="name -> why the new version was refused")
    gates: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> the quality gate's figures for each new "
        "version checked: PSNR-Y against bicubic (super-resolution); per style, the texture "
        "ratio to its painting (at most 0.5 passes)")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="starting, ready, draining or failed")
    models: int
    error: str | None = None


class JobProgress(BaseModel):
    done: int = Field(description="tile passes computed (an image in one pass: 1 of 1)")
    total: int = Field(description="tile passes in all; 0 until the job starts")


class JobStatus(BaseModel):
    id: str
    kind: str = Field(description="stylize or superres")
    state: str = Field(description="queued, running, done or failed")
    progress: JobProgress
    created: str = Field(description="ISO 8601, UTC")
    started: str | None = Field(description="of the current attempt")
    finished: str | None
    attempts: int = Field(description="times a replica started it: more than 1 after one died")
    detail: dict[str, Any] = Field(default_factory=dict, description="more progress, by kind: a "
                                   "style being learned gives its losses and seconds left")
    error: ErrorBody | None = Field(description="why it failed")
    url: str = Field(description="this status")
    result: str | None = Field(description="where the output image is, once done")


class StyleInfo(BaseModel):
    name: str
    models: list[str] = Field(description="the networks that hold it")
    origin: str = Field(description="shipped, or learned (POST /v1/styles)")
    learned: dict[str, Any] | None = Field(None, description="how it was learned: painting "
                                           "digest, command, steps, losses, seconds")


class StyleList(BaseModel):
    styles: list[StyleInfo]
