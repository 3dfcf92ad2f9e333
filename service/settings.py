"""Every knob of the service, read once from the environment (prefix SERVICE_)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_store import SHIPPED_ROOT

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service configuration; env var = SERVICE_ + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="ignore",
                                      validate_by_name=True, validate_by_alias=True)

    # Models
    model_store: Path = SHIPPED_ROOT
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="names to load (comma-separated); empty = all")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on CUDA, float32 on CPU")
    torch_threads: int = Field(0, ge=0, description="intra-op CPU threads; 0 = torch default")

    # Batching
    max_batch_size: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0)
    max_batch_pixels: int = Field(4 * 512 * 512, ge=1)
    queue_limit: int = Field(64, ge=1, description="requests waiting for a batch")
    max_inflight: int = Field(256, ge=1, description="admitted requests, decoding included")
    request_timeout_s: float = Field(30.0, gt=0)

    # Limits on what a client may send
    max_body_bytes: int = Field(20 * MiB, ge=1)
    max_pixels: int = Field(4096 * 4096, ge=1, description="input pixels, from the header")
    max_output_pixels: int = Field(8192 * 8192, ge=1, description="super-resolution output")
    codec_threads: int = Field(2, ge=1, description="threads that decode and encode images")

    # Cache
    cache_bytes: int = Field(256 * MiB, ge=0, description="in-process LRU size; 0 disables")
    cache_ttl_s: int = Field(24 * 3600, ge=1)
    cache_max_value_bytes: int = Field(8 * MiB, ge=1)
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("SERVICE_REDIS_URL", "REDIS_URL", "redis_url"))
    redis_timeout_s: float = Field(0.25, gt=0)
    redis_key_prefix: str = "pst:v1:"

    # Process
    drain_timeout_s: float = Field(30.0, ge=0)
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        """Accept "a,b" from the environment as well as a list."""
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return value or None


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment; keyword overrides (e.g. command-line flags) win."""
    return Settings(**overrides)
