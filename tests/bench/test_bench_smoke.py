"""Each `python -m bench` subcommand runs end to end with tiny settings and writes the JSON
its readers expect. Structure only: no timing is asserted (timings belong in bench/results)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from bench import cache as bench_cache
from bench import gpu_carry
from bench import load as bench_load
from bench import model as bench_model
from bench import service as bench_service
from bench.__main__ import BENCHMARKS
from tests.helpers import images
from tests.train.test_gatys import random_vgg_state
from train.vgg_weights import export

MACHINE = {"cpu", "cores", "torch", "threads", "gpu"}


def test_every_subcommand_is_registered() -> None:
    assert {"model", "service", "cache"} <= set(BENCHMARKS)


@pytest.mark.parametrize("photos", ["shared", "none"])   # a clone without the data: synthetic
def test_model(tmp_path: Path, photos: str) -> None:
    out = tmp_path / "model.json"
    images = str(bench_model.IMAGES if photos == "shared" else tmp_path / "no-photos")
    assert bench_model.main(["--device", "cpu", "--networks", "style,sr_x4", "--sizes", "32",
                             "--batches", "1", "--paths", "eager_fp32,rewrite",
                             "--min-s", "0", "--min-runs", "1", "--max-runs", "1",
                             "--lanes", "", "--images", images, "--out", str(out)]) == 0
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
        "--raw-min-s", "0", "--raw-policy", "fixed", "--pairs", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["machine"]) >= MACHINE and result["levels"] == [1, 2]
    assert {"batch1_latency_ms", "best_images_per_s"} <= set(result["raw"]["sizes"]["32"])
    rows = result["sweeps"]["fixed"]["runs"]["32"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rounds"] == len(r["round_throughputs"]) == 2      # the default --rounds
        assert {"throughput_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "batches"} <= set(r)
        assert r["errors_total"] == 0 and sum(r["batches"].values()) >= 1
    assert result["sweeps"]["fixed"]["policy"]["source"] == "fixed"
    for timing in ("raw", "raw_after"):    # before and after the one-size run
        assert {"batch1_latency_ms", "best_images_per_s"} <= set(result["sweeps"]["fixed"][timing])
    turns = result["sweeps"]["fixed"]["one_client_in_turns"]
    assert turns["pairs"] == 3
    assert turns["p50_minus_raw_ms"] == pytest.approx(turns["http_p50_ms"]
                                                      - turns["raw_batch1_p50_ms"])
    assert {"errors_total", "zero_errors_met"} <= set(result["targets"])


def test_a_level_pools_the_windows_of_its_rounds() -> None:
    def window(seconds: float, answers: list[tuple[float, object]], batches: dict[str, float],
               images: float, forward_s: float, server_cpu_s: float) -> dict:
        return {"inside": answers, "window_s": seconds, "errors_total": 0,
                "batches": {"batches": batches, "forward_passes": sum(batches.values()),
                            "images": images, "forward_s": forward_s,
                            "singleflight_shared": 0.0},
                "cpu_s": {"client": 0.001 * len(answers), "server": server_cpu_s}}

    row = bench_load.summarize(4, [
        window(1.0, [(0.1, 200), (0.2, 200), (0.3, 200)], {"1": 1, "2": 1}, 3, 0.3, 0.02),
        window(2.0, [(0.4, 200), (0.5, 503)], {"1": 1}, 1, 0.1, 0.01)])
    assert row["throughput_per_s"] == pytest.approx(4 / 3)      # 4 answers of 200 in 3 s
    assert row["round_throughputs"] == pytest.approx([3.0, 0.5])
    assert (row["completed"], row["errors"], row["statuses"]) == (5, 1, {"200": 4, "503": 1})
    assert row["p50_ms"] == pytest.approx(250)                    # of 100, 200, 300, 400 ms
    assert row["batches"] == {"1": 2, "2": 1} and row["forward_passes"] == 3
    assert row["mean_batch"] == pytest.approx(4 / 3)              # 4 images in 3 passes
    assert row["mean_forward_ms"] == pytest.approx(400 / 3)
    assert row["server_cpu_ms_per_request"] == pytest.approx(30 / 5)   # 30 ms over 5 answers
    assert row["client_cpu_ms_per_request"] == pytest.approx(1.0)


@pytest.mark.timeout(180)
def test_service_on_the_stub_device(tmp_path: Path) -> None:
    out = tmp_path / "stub.json"
    assert bench_service.main([
        "--device", "stub", "--size", "32", "--concurrency", "1,2", "--workers", "1,2",
        "--duration-s", "0.3", "--warmup-s", "0.2", "--min-done", "2", "--rounds", "1",
        "--codec-s", "0.2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["curve"]["side"] == 256 and result["curve"]["batch_ms"]["1"] > 0
    assert result["stub_ceiling"]["images_per_s"] > 0
    assert set(result["codec_ceiling"]) == {"photo_jpeg", "noise_png"}
    assert [c["workers"] for c in result["configs"]] == [1, 2]
    for config in result["configs"]:
        for kind, rows in config["runs"].items():
            assert [r["concurrency"] for r in rows] == [1, 2], kind
            for r in rows:
                assert r["errors_total"] == 0 and r["server_cpu_ms_per_request"] > 0
    t = result["targets"]
    assert {"two_workers_lose_nothing_met", "jpeg_cpu_3ms_met", "errors_total"} <= set(t)
    assert t["photo_jpeg_two_workers_vs_one_at_2"] == pytest.approx(
        result["configs"][1]["runs"]["photo_jpeg"][1]["throughput_per_s"]
        / result["configs"][0]["runs"]["photo_jpeg"][1]["throughput_per_s"])


def test_startup(tmp_path: Path) -> None:
    from bench import startup as bench_startup

    out = tmp_path / "startup.json"
    assert bench_startup.main(["--rounds", "1", "--models", "udnie", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["cold"]) == len(result["stored"]) == 1
    assert result["cold_median_s"] > 0 and result["stored_median_s"] > 0
    assert set(result["machine"]) >= MACHINE
    assert result["sources"] == {"cold": {"udnie": "measured"},
                                 "stored": {"udnie": "stored (measured)"}}


def test_live_swap(tmp_path: Path) -> None:
    from bench import live as bench_live

    out = tmp_path / "live.json"
    assert bench_live.main(["--only", "swap", "--swaps", "2", "--settle-s", "1",
                            "--warmup-s", "0.5", "--size", "64", "--concurrency", "2",
                            "--images", str(tmp_path / "no-photos"), "--out", str(out)]) == 0
    swap = json.loads(out.read_text())["swap"]
    assert [s["status"] for s in swap["swaps"]] == [200, 200] and swap["all_swapped"]
    assert swap["lost"] == 0 and swap["during"]["answers"] > 0
    assert len(swap["swap_spans"]) == 2 and len(swap["timeline"]) == (
        swap["outside"]["answers"] + swap["during"]["answers"])
    assert out.with_suffix(".png").is_file()


def test_gpu_carry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "styles").mkdir(parents=True)
    (data / "photos").mkdir()
    painting = images.encode(Image.new("RGB", (40, 30), (200, 100, 0)))
    (data / "styles" / "own.jpg").write_bytes(painting)
    for i, size in enumerate([(300, 200), (120, 160), (90, 90)]):
        Image.new("RGB", size, (i * 80, 0, 0)).save(data / "photos" / f"{i}.jpg")
    monkeypatch.setenv("PERCEPTUAL_DATA", str(data))
    state = random_vgg_state()
    export("vgg16", state, tmp_path / "vgg.safetensors")
    out = tmp_path / "carry"
    assert gpu_carry.main(["--painting", "own", "--short-side", "64", "--out", str(out),
                           "--vgg-weights", str(tmp_path / "vgg.safetensors")]) == 0
    carried = load_file(out / "vgg.safetensors")
    with safe_open(str(out / "vgg.safetensors"), "pt") as f:
        assert (f.metadata() or {})["kind"] == "vgg16"
    assert set(carried) == set(state)
    assert all(t.dtype == torch.float16 for t in carried.values())
    assert torch.allclose(carried["conv0.weight"].float(), state["conv0.weight"], atol=1e-3)
    assert (out / "data" / "styles" / "own.jpg").read_bytes() == painting
    sizes = sorted(Image.open(p).size for p in (out / "data" / "photos").iterdir())
    assert sizes == [(64, 64), (64, 85), (96, 64)]     # shorter side 64, as the trainer's


def test_live_learn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `bash bench/gpu.sh OUT learn` runs it: the data from PERCEPTUAL_DATA, the learning
    settings from the environment."""
    from bench import live as bench_live

    data = tmp_path / "data"
    (data / "styles").mkdir(parents=True)
    (data / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(
            data / "photos" / f"{i}.png")
    Image.new("RGB", (48, 48), (240, 200, 30)).save(data / "styles" / "own.jpg")
    export("vgg16", random_vgg_state(), tmp_path / "vgg.safetensors")
    monkeypatch.setenv("PERCEPTUAL_DATA", str(data))
    monkeypatch.setenv("SERVICE_LEARN_ITERATIONS", "25")
    monkeypatch.setenv("SERVICE_LEARN_CROP_SIZE", "32")
    monkeypatch.setenv("SERVICE_LEARN_EXTRA_ARGS", "--image-size 32 --batch-size 2 --amp none "
                       f"--device cpu --vgg-weights {tmp_path / 'vgg.safetensors'}")
    out = tmp_path / "live.json"
    assert bench_live.main(["--only", "learn", "--painting", "own", "--settle-s", "1",
                            "--warmup-s", "0.5", "--size", "64", "--concurrency", "2",
                            "--images", str(tmp_path / "no-photos"), "--out", str(out)]) == 0
    learn = json.loads(out.read_text())["learn"]
    assert learn["settings"]["SERVICE_LEARN_ITERATIONS"] == "25" and learn["steps"] == 25
    assert learn["painting"] == "own" and learn["target_s"] == 600
    # 25 steps with a random loss network: the gate decides; either way nothing else fails
    assert learn["served_status"] == (200 if learn["state"] == "done" else 404)
    assert learn["others_failed"] == 0 and learn["during"]["answers"] > 0
