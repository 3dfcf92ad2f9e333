"""Each `python -m bench` subcommand runs end to end with tiny settings and writes the JSON
its readers expect. Structure only: no timing is asserted (timings belong in bench/results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cache as bench_cache
from bench import model as bench_model
from bench import service as bench_service
from bench.__main__ import BENCHMARKS

MACHINE = {"cpu", "cores", "torch", "threads", "gpu"}


def test_every_subcommand_is_registered() -> None:
    assert {"model", "service", "cache"} <= set(BENCHMARKS)


def test_model(tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    assert bench_model.main(["--device", "cpu", "--networks", "style,sr_x4", "--sizes", "32",
                             "--batches", "1", "--paths", "eager_fp32,rewrite",
                             "--min-s", "0", "--min-runs", "1", "--max-runs", "1",
                             "--lanes", "", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["complete"] and set(result["machine"]) >= MACHINE
    assert len(result["load_average_start"]) == len(result["load_average_end"]) == 3
    rows = result["results"]
    assert {(r["network"], r["batch"], r["path"]) for r in rows} == {
        (n, 1, p) for n in ("style", "sr_x4") for p in ("eager_fp32", "rewrite")}
    for r in rows:
        assert {"latency_ms", "images_per_s", "speedup", "max_diff_levels",
                "service_path"} <= set(r)
        assert r["max_diff_levels"] <= 1          # all three are float32
    assert {s["network"] for s in result["summary"]} == {"style", "sr_x4"}
    assert out.with_suffix(".png").stat().st_size > 0


def test_cache(tmp_path: Path) -> None:
    out = tmp_path / "cache.json"
    assert bench_cache.main(["--side", "64", "--gets", "20", "--seconds", "0.05", "--no-http",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    memory = result["cache"]["memory"]
    assert {"p50_ms", "p99_ms", "hits_per_s_1_readers", "hits_per_s_8_readers"} <= set(memory)
    assert "redis" in result["cache"]            # measured, or skipped with the reason
    assert set(result["targets"]) == {"redis_hit_p50_ms", "redis_hit_p50_under_3ms_met"}


@pytest.mark.timeout(120)
def test_service(tmp_path: Path) -> None:
    out = tmp_path / "service.json"
    assert bench_service.main([
        "--device", "cpu", "--size", "32", "--mixed", "", "--concurrency", "1,2",
        "--configs", "fixed", "--duration-s", "0.2", "--warmup-s", "0.2", "--min-done", "2",
        "--raw-min-s", "0", "--raw-policy", "fixed", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["machine"]) >= MACHINE and result["levels"] == [1, 2]
    assert {"batch1_latency_ms", "best_images_per_s"} <= set(result["raw"]["sizes"]["32"])
    rows = result["sweeps"]["fixed"]["runs"]["32"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    for r in rows:
        assert {"throughput_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "batches"} <= set(r)
        assert r["errors_total"] == 0 and sum(r["batches"].values()) >= 1
    assert result["sweeps"]["fixed"]["policy"]["source"] == "fixed"
    assert {"batch1_latency_ms", "best_images_per_s"} <= set(result["sweeps"]["fixed"]["raw"])
    assert {"errors_total", "zero_errors_met"} <= set(result["targets"])
