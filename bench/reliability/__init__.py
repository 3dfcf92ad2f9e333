"""`python -m bench reliability`: does the service keep working when attacked and overloaded?

Runs `python -m service` as a child process on 127.0.0.1 (so that its RSS is its own, read from
/proc) and plays, in order:

  corpus        bench/hostile.py's bad and odd requests: status and error code expected and
                got, and the server's peak RSS for each (VmHWM, reset before every case)
  schemathesis  generated requests from the service's own OpenAPI schema: no 5xx, every
                response conforms
  overload      capacity measured closed-loop, then 10x that open-loop: admitted requests'
                latency, 429s with Retry-After and how fast they come, RSS, then normal service
  faults        Redis killed and restarted under load; a model whose forward raises (served
                in-process, with the shipped network behind a fault-injecting wrapper);
                clients disconnecting in bulk; SIGTERM under load
  soak          mixed load for --soak-s seconds: RSS growth after warm-up, errors
  oversized     at the service's default limits, the largest requests (1024x1024 at x8, ...)
                and one as a job: answer, seconds, and peak RSS over the idle peak (<= 1 GiB)

Every load goes to 127.0.0.1 only, is bounded in count and time, and stops by itself. Writes
bench/results/reliability[-quick].json and .md. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench.machine import describe
from bench.reliability.corpus import run_corpus
from bench.reliability.faults import guarded, run_faults
from bench.reliability.overload import run_overload
from bench.reliability.oversized import run_oversized
from bench.reliability.process import LIMITS
from bench.reliability.report import markdown
from bench.reliability.schemathesis_run import run_schemathesis
from bench.reliability.soak import run_soak

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def commit() -> str | None:
    """The commit measured: BENCH_COMMIT (for an exported tree), else git's HEAD."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    with suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sections = args.only.split(",") if args.only else ["corpus", "schemathesis", "overload",
                                                        "faults", "soak", "oversized"]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    report: dict[str, Any] = {
        "quick": args.quick, "machine": describe(), "load_before": load_average(),
        "limits": {k: v for k, v in vars(LIMITS).items()}, "logs": str(log_dir),
        "commit": commit()}
    overload_s = args.overload_s or (10.0 if args.quick else 60.0)
    soak_s = args.soak_s if args.soak_s is not None else (60.0 if args.quick else 900.0)
    steps = {"corpus": lambda: run_corpus(log_dir, args.quick),
             "schemathesis": lambda: run_schemathesis(log_dir, args.quick),
             "overload": lambda: run_overload(log_dir, args.quick, overload_s),
             "faults": lambda: run_faults(log_dir, args.quick),
             "soak": lambda: run_soak(log_dir, soak_s),
             "oversized": lambda: run_oversized(log_dir, args.quick)}
    for name in sections:
        print(f"{name} (load average {load_average()})", flush=True)
        started = time.monotonic()
        report[name] = await guarded(steps[name])
        report[name]["wall_s"] = round(time.monotonic() - started, 1)
    report["load_after"] = load_average()
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs for development (soak 60 s, overload 10 s)")
    parser.add_argument("--soak-s", type=float, default=None, help="soak seconds (default 900)")
    parser.add_argument("--overload-s", type=float, default=None,
                        help="seconds at 10x capacity (default 60)")
    parser.add_argument("--only", help="comma-separated sections: corpus, schemathesis, "
                                       "overload, faults, soak, oversized")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "reliability-quick" if args.quick else "reliability"
    if args.only:
        stem += "-" + args.only.replace(",", "-")
    passed = verdict(report)
    report["passed"] = passed
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report, passed) + "\n")
    print(f"wrote {args.out / stem}.json and .md; every claim held: {passed}")
    return 0 if passed else 1


def verdict(report: dict[str, Any]) -> bool:
    """True when every section that ran met its claim (an error in a section fails it)."""
    sections = [report[k] for k in ("corpus", "schemathesis", "overload", "faults", "soak",
                                    "oversized") if k in report]
    faults = report.get("faults", {})
    if any("error" in x for x in [*sections, *(v for v in faults.values()
                                                 if isinstance(v, dict))]):
        return False
    checks = []
    if c := report.get("corpus"):
        checks += [not c["not_as_expected"], c["server_5xx"] == 0, not c["no_answer"],
                   c["rss_bounded"]]
    if (s := report.get("schemathesis")) and "skipped" not in s:
        checks += [s["server_5xx"] == 0, s["failures"] == 0]
    if o := report.get("overload"):
        checks += [o["other"] == 0, o["shed_429"] == o["shed_with_retry_after"],
                   set(o["after"]["statuses"]) == {200}]
    if f := faults:
        checks += [f["redis"]["failed"] == 0, f["redis"]["first_hit_after_restart_s"] is not None,
                   f["raising_model"]["500s_exactly_the_poisoned"],
                   f["raising_model"]["others_200"], f["disconnects"]["queue_depth_after"] == 0,
                   f["disconnects"]["inflight_after"] == 0,
                   f["sigterm"]["exit_code"] == 0, f["sigterm"]["every_admitted_completed"]]
    if k := report.get("soak"):
        checks += [not k["unexpected"], k["rss_growth_after_warmup_pct"] < 5]
    if v := report.get("oversized"):
        checks += [v["within_budget"], v["no_5xx"]]
    return all(checks)
