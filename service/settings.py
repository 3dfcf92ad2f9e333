"""Every knob of the service, read once from the environment (prefix SERVICE_)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_store import SHIPPED_ROOT, data_root

MiB = 1024 * 1024
PILLOW_MAX_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)   # PIL.Image.open's hard limit


def _default_style_images() -> Path | None:
    """The style paintings of the shared data folder (`model_store.data_root`), when present."""
    folder = data_root() / "styles"
    return folder if folder.is_dir() else None


def _default_learn_photos() -> Path | None:
    """The training photos of the shared data folder, when present."""
    folder = data_root() / "photos"
    return folder if folder.is_dir() else None


def _default_policy_file() -> str:
    """Under the user's cache folder, so that `make serve` starts fast the second time."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "perceptual-service" / "policy.json")


class Settings(BaseSettings):
    """Service configuration; env var = SERVICE_ + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="ignore",
                                      validate_by_name=True, validate_by_alias=True)

    # Models
    model_store: Path = SHIPPED_ROOT
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="names to load (comma-separated); empty = all")
    device: Literal["auto", "cpu", "cuda", "stub"] = Field(
        "auto", description="auto = cuda when there is one, else cpu; stub = no forward pass, "
                            "a wait as long as `stub_cost` says (service/stub.py: measuring "
                            "the front end without a GPU)")
    stub_cost: Path | None = Field(
        None, description="the stub device's cost per batch, a JSON file {side, batch_ms}")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on CUDA, float32 on CPU")
    torch_threads: int = Field(0, ge=0, description="intra-op CPU threads; 0 = torch default")

    # Batching
    max_batch_size: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(
        0.0, ge=0, description="how long a request waits for others to fill its batch while "
                               "the device is idle; 0: a batch starts as soon as the device "
                               "is free (while a batch runs, requests queue anyway and form "
                               "the next one, so the arrival rate sets the batch size)")
    max_batch_pixels: int = Field(4 * 512 * 512, ge=1)
    max_activation_bytes: int | None = Field(
        None, ge=1, description="largest intermediate tensor of a batch; None: only the "
                                "2^31 elements that 32-bit index math allows")
    queue_limit: int = Field(64, ge=1, description="requests waiting for a batch")
    max_inflight: int = Field(256, ge=1, description="admitted requests, decoding included")
    request_timeout_s: float = Field(
        30.0, gt=0, description="a request must be answered within this; one predicted to "
                                "compute longer is refused at once (413 too_slow)")
    memory_budget_bytes: int | None = Field(
        1024 * MiB, ge=1, description="host memory the requests being computed may hold at "
                                      "once, per process (service/memory.py): inside the k8s "
                                      "memory limits with the models and torch beside it. An "
                                      "image one pass over which would hold more than half of "
                                      "it runs in tiles; unset = no budget")
    batch_policy: Literal["measure", "fixed"] = Field(
        "measure", description="measure: at warm-up, time the execution paths, batch sizes and "
                               "concurrent forwards on this device and use the fastest; fixed: "
                               "max_batch_size, one forward at a time, plain torch")
    policy_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [256, 512],
        description="output sides measured at warm-up (comma-separated)")
    policy_budget_s: float = Field(
        8.0, gt=0, description="warm-up measurement seconds per architecture (soft)")
    policy_file: str = Field(
        default_factory=_default_policy_file,
        description="where the measured policies are kept across starts (service/"
                    "policy_store.py): a model whose device, cores, libraries, weights and "
                    "policy settings are unchanged is not measured again; empty = measure at "
                    "every start")
    remeasure: bool = Field(False, description="measure every model even when its stored "
                                               "policy matches (`--remeasure`)")
    lanes: int = Field(
        0, ge=0, le=64,
        description="batches run at once, each on its own worker thread. CPU: the threads are "
                    "split between them; 0 = measured at warm-up (measure policy), else 1. "
                    "CUDA: each has its own streams and pinned staging buffers, so that one "
                    "batch's copies overlap another's compute; 0 = 2")

    # Styles and blends (service/styles.py)
    style_backend: Literal["single", "multi"] = Field(
        "single", description="which network answers a one-style request when both its own "
                              "network and a multi-style network holding it are loaded: "
                              "'single' (its own) or 'multi'; the other when only one is. "
                              "Blends always run on a multi-style network")
    max_blend_styles: int = Field(8, ge=1, le=64, description="names one `style` parameter "
                                                               "may blend; more: 422")

    # Big images: tiled inference (service/tiling.py)
    tile_threshold_pixels: int = Field(
        2048 * 2048, ge=1, description="network output pixels above which an image is cut "
                                       "into tiles (a tile's activations, not the image's, "
                                       "then bound the memory)")
    tile_size: int = Field(512, ge=32, description="style tile side, input pixels: a CPU "
                                                    "pass over 512x512 holds about 110 MiB")
    tile_overlap: int = Field(128, ge=0, description="overlap of neighbouring style tiles, "
                                                     "input pixels")
    tile_norm_stats: Literal["image", "tile"] = Field(
        "image", description="instance-norm networks in tiles: 'image' measures the whole "
                             "image's statistics first (matches untiled output; several "
                             "extra passes), 'tile' lets each tile use its own (one pass; "
                             "colours and contrast differ from untiled)")
    superres_tile_size: int = Field(128, ge=16, description="super-resolution tile side at "
                                                             "x4, input pixels (x8: half, the "
                                                             "same output size)")
    superres_tile_overlap: int = Field(16, ge=0, description="overlap of neighbouring "
                                                             "super-resolution tiles, input px")

    # The web page (service/routes/web.py)
    style_images_dir: Path | None = Field(
        default_factory=lambda: _default_style_images(),
        description="folder of style paintings <style>.jpg for the page's thumbnails; "
                    "unset = none (the page shows names)")

    # Limits on what a client may send
    max_body_bytes: int = Field(20 * MiB, ge=1)
    # At most what Pillow's own decompression-bomb check (its default, left as it is: an error
    # over 2 x 89478485 pixels) lets through behind ours.
    max_pixels: int = Field(4096 * 4096, ge=1, le=PILLOW_MAX_PIXELS,
                            description="input pixels, from the header")
    max_output_pixels: int = Field(8192 * 8192, ge=1, description="super-resolution output")
    codec_threads: int = Field(0, ge=0, description="threads that decode and encode images, "
                                                    "per worker; 0 = the cores over the workers")
    max_decoded_bytes: int | None = Field(
        None, ge=1, description="decoded raster (width x height x 1, 2 or 4 bytes by the "
                                "file's mode), from the header; unset = 4 x max_pixels")
    max_url_bytes: int = Field(8192, ge=64, description="path + query string; 414")
    max_header_bytes: int = Field(16384, ge=256, description="all header names + values; 431")
    header_timeout_s: float = Field(10.0, gt=0, description="to receive the request head; 408")
    body_timeout_s: float = Field(30.0, gt=0, description="to receive the body; 408")

    # Who may call (off by default: the embedded local run needs no key)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated; non-empty = /v1/* needs a key")
    metrics_api_key: SecretStr | None = Field(
        None, description="if set, /metrics needs this key (probes stay open)")
    admin_api_key: SecretStr | None = Field(
        None, description="the key of /admin/* (POST /admin/models/reload); with api_keys set "
                          "and this unset, /admin/* is closed")
    rate_limit_per_s: float = Field(
        0.0, ge=0, description="requests per second per key (per client address without "
                               "keys); 0 = no limit")
    rate_limit_burst: int = Field(0, ge=0, description="bucket size; 0 = max(1, rate)")

    # Cache
    cache_bytes: int = Field(256 * MiB, ge=0, description="in-process LRU size; 0 disables")
    cache_ttl_s: int = Field(24 * 3600, ge=1)
    cache_max_value_bytes: int = Field(8 * MiB, ge=1)
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("SERVICE_REDIS_URL", "REDIS_URL", "redis_url"))
    redis_timeout_s: float = Field(0.25, gt=0)
    redis_key_prefix: str = "pst:v1:"

    # Jobs: work past the request time limit, fetched later (service/job_runner.py)
    job_timeout_s: float = Field(
        900.0, gt=0, description="a job must finish within this; one predicted to compute "
                                 "longer is refused when submitted (413 too_slow)")
    job_queue_limit: int = Field(16, ge=1, description="jobs queued or running, across "
                                                       "replicas with Redis; more: 429")
    job_workers: int = Field(1, ge=1, le=16, description="jobs run at once by each process")
    job_ttl_s: int = Field(3600, ge=1, description="a job and its result are kept this long "
                                                   "after they last changed")
    job_lease_s: float = Field(
        30.0, gt=0, description="a running job's replica renews its claim every third of "
                                "this; a claim not renewed for this long (the replica died) "
                                "puts the job back in the queue for another")
    job_results_bytes: int = Field(512 * MiB, ge=1, description="results kept in process "
                                                                "(without Redis), oldest "
                                                                "dropped first")
    jobs_redis_url: str | None = Field(
        None, description="a Redis for the jobs other than the cache's (default: the same): "
                          "the cache's evicts under memory pressure (allkeys-lru), which a job "
                          "should not be; give the jobs one with --maxmemory-policy noeviction")
    job_redis_timeout_s: float = Field(
        10.0, gt=0, description="Redis calls of the jobs, which move inputs and results of "
                                "up to the size limits")

    # New styles learned from uploaded paintings (service/style_learning.py)
    learn_photos_dir: Path | None = Field(
        default_factory=lambda: _default_learn_photos(),
        description="photos a new style trains on; unset = POST /v1/styles answers 503")
    learn_base_model: str = Field("multistyle", description="the multi-style network that "
                                                            "learns new styles")
    learn_iterations: int = Field(4000, ge=1, description="training steps of a new style, at "
                                                          "most")
    learn_time_limit_s: float = Field(
        450.0, gt=0, description="training time of a new style, at most: with the loss "
                                 "network's start and the reload, served within 10 minutes")
    learn_crop_size: int = Field(128, ge=16, description="side of its training crops")
    learn_threads: int = Field(1, ge=1, description="CPU threads of the trainer: on a CPU "
                                                    "server one core learns, the others serve")
    learn_extra_args: str = Field("", description="more flags for `python -m train multistyle "
                                                  "--add-style`, e.g. --vgg-weights FILE")
    learn_queue_limit: int = Field(4, ge=1, description="style jobs queued or running; one "
                                                        "runs at a time per process")
    learn_quota_per_day: int = Field(5, ge=0, description="styles each API key (client "
                                                          "address without keys) may learn a "
                                                          "day; 429 past it")

    # Processes
    workers: int = Field(1, ge=1, le=64, description="HTTP worker processes on the one port, "
                                                     "each with its own models, batcher, "
                                                     "cache and limits (service/workers.py)")
    drain_timeout_s: float = Field(30.0, ge=0)
    device_check_s: float = Field(
        5.0, ge=0, description="least time between two health forwards of /readyz")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _tiles_overlap_less_than_half(self) -> Settings:
        """A tile must advance: its overlap on both sides must leave some of it new."""
        for size, overlap, name in ((self.tile_size, self.tile_overlap, "tile"),
                                    (self.superres_tile_size, self.superres_tile_overlap,
                                     "superres_tile")):
            if 2 * overlap >= size:
                raise ValueError(f"{name}_overlap ({overlap}) must be under half of "
                                 f"{name}_size ({size})")
        return self

    @model_validator(mode="after")
    def _stub_needs_a_cost(self) -> Settings:
        if self.device == "stub" and self.stub_cost is None:
            raise ValueError("device=stub needs stub_cost, the device's cost per batch")
        return self

    @model_validator(mode="after")
    def _one_rate_limit_for_all_workers(self) -> Settings:
        """Each worker process would keep its own buckets: a client would get `workers` times
        the rate. Redis holds one bucket per key for all of them."""
        if self.workers > 1 and self.rate_limit_per_s > 0 and not self.redis_url:
            raise ValueError("rate_limit_per_s with workers > 1 needs redis_url (one bucket "
                             "per key across the worker processes)")
        return self

    def codec_thread_count(self) -> int:
        """`codec_threads`, or this worker's share of the cores the process may use."""
        return self.codec_threads or max(1, available_cores() // self.workers)

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        """Accept "a,b" from the environment as well as a list."""
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Accept "k1,k2" from the environment (or a Secret's file contents) as well as a list."""
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("policy_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(n) for n in value.split(",") if n.strip()]
        return value

    @field_validator("redis_url", "jobs_redis_url", "metrics_api_key", "admin_api_key",
                     "style_images_dir",
                     "memory_budget_bytes", "learn_photos_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return value or None


def available_cores() -> int:
    """CPUs this process may run on: its affinity, and the cgroup's quota (a Kubernetes CPU
    limit), whichever is smaller."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment; keyword overrides (e.g. command-line flags) win."""
    return Settings(**overrides)
