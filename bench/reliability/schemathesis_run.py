"""The schemathesis section: generated requests from the service's OpenAPI schema. (Not
named schemathesis.py, which would shadow the package.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from bench import hostile
from bench.reliability.process import FACTOR, STYLE, service


def run_schemathesis_sync(port: int, examples: int) -> dict[str, Any]:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    def fuzz(strategy: st.SearchStrategy[schemathesis.Case]) -> tuple[Counter[int], str | None]:
        """Statuses of `examples` generated calls, and the first failure (or None)."""
        statuses: Counter[int] = Counter()

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(timeout=60)
            statuses[response.status_code] += 1

        try:
            check()
        except Exception as e:  # a schemathesis failure group: record it, go on
            return statuses, str(e)[:2000]
        return statuses, None

    hostile.register_image_strategies()
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    # Random names are 404s: known ones (twice as often) take requests on to the model.
    known: dict[str, list[dict[str, Any]]] = {"/v1/stylize": [{"style": STYLE}] * 2,
                                              "/v1/superres": [{"factor": FACTOR}] * 2}
    operations = [("POST", "/v1/stylize"), ("POST", "/v1/superres"), ("GET", "/v1/models"),
                  ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
    results: list[dict[str, Any]] = []
    for method, path in operations:
        for mode in GenerationMode:
            if mode is GenerationMode.NEGATIVE and path not in known:
                continue
            operation = schema[path][method]
            strategy = st.one_of(*(operation.as_strategy(mode, query=q)
                                   for q in known.get(path, [])), operation.as_strategy(mode))
            statuses, failure = fuzz(strategy)
            results.append({"operation": f"{method} {path}", "mode": str(mode),
                            "requests": sum(statuses.values()),
                            "statuses": dict(sorted(statuses.items())), "failure": failure})
            print(f"  {method} {path} {mode}: {dict(sorted(statuses.items()))}"
                  f"{'  FAILED' if failure else ''}", flush=True)
    return {"examples_per_operation": examples, "operations": results,
            "requests": sum(r["requests"] for r in results),
            "server_5xx": sum(n for r in results for s, n in r["statuses"].items() if s >= 500),
            "failures": sum(r["failure"] is not None for r in results)}


async def run_schemathesis(log_dir: Path, quick: bool) -> dict[str, Any]:
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        return {"skipped": "schemathesis is not installed (pip install -e '.[test]')"}
    with service({}, log_dir, "schemathesis") as svc:
        await svc.ready()
        return await asyncio.to_thread(run_schemathesis_sync, svc.port, 15 if quick else 60)
