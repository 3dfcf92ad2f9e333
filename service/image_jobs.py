"""Image jobs: POST /v1/jobs/stylize and /v1/jobs/superres as jobs (service/job_runner.py).

A job is checked when submitted as its request would be (`Inference.check`: decodable, within
the size limits, predicted to finish within the job time limit and to fit the memory budget),
then runs through `Inference.transform` like a request: the same batcher, tiling, memory budget
and cache; only its time limit differs.
"""

from __future__ import annotations

import time

from service import errors
from service.inference import Inference, OutputOptions, StyleOptions
from service.job_runner import Handler, JobOutput
from service.jobs import Job, new_id
from service.registry import LoadedModel, Registry
from service.tiling import Progress


async def prepare(inference: Inference, kind: str, model: LoadedModel, data: bytes,
                  options: OutputOptions, style: StyleOptions | None, caller: str | None, *,
                  timeout_s: float) -> Job:
    """The job for `data`, after the checks its request would get (4xx now, not a failed
    job later)."""
    await inference.check(model, data, time_limit_s=timeout_s, style=style)
    spec: dict[str, object] = {"model": model.name, "format": options.format,
                               "quality": options.quality}
    if style is not None:
        spec["style"] = {"strength": style.strength, "preserve_color": style.preserve_color,
                         "mix": list(style.mix) if style.mix is not None else None}
    return Job(new_id(), kind, spec, caller)


def handler(inference: Inference, registry: Registry, *, timeout_s: float) -> Handler:
    """Runs an image job on the model its spec names (as now loaded), within `timeout_s`."""

    async def run(job: Job, data: bytes, progress: Progress) -> JobOutput:
        spec = job.spec
        model = registry.get(spec["model"])
        if model is None:
            raise errors.UnknownModel(f"model {spec['model']} is no longer served")
        style = None
        if "style" in spec:
            mix = spec["style"]["mix"]
            style = StyleOptions(spec["style"]["strength"], spec["style"]["preserve_color"],
                                 tuple(mix) if mix is not None else None)
        outcome = await inference.transform(
            model, data, OutputOptions(spec["format"], spec["quality"]),
            deadline=time.monotonic() + timeout_s, style=style, time_limit_s=timeout_s,
            progress=progress)
        return JobOutput(outcome.body, outcome.content_type)

    return run
