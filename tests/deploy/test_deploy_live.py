"""The deployment against the real app: probe paths, the image's healthcheck, and every metric
that the dashboard, the alerts and the HPA's adapter rule query.

One app (create_app with a tiny random style model in a temporary store, on the CPU) is served
by uvicorn on a free port for the whole module.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml
from conftest import DOCKER, K8S, OVERLAYS, find, inference_deployment, render, service_container
from dockerfile_parse import exec_form, final_stage
from promql_refs import EXTERNAL_METRICS, TARGET_LABELS, all_queries

STYLE = "udnie"


@dataclass
class Live:
    url: str
    port: int
    paths: set[str]          # route paths of the app


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    import torch
    import uvicorn

    from model_store import ModelStore
    from nets.style_net import StyleNet
    from service.app import create_app
    from service.settings import Settings

    store = tmp_path_factory.mktemp("store")
    torch.manual_seed(0)
    ModelStore(store).save(StyleNet(norm="instance"), name=STYLE, task="style",
                           architecture="style", options={"norm": "instance"})
    settings = Settings(model_store=store, models=[STYLE], device="cpu", dtype="float32",
                        redis_url=None, max_wait_ms=1, drain_timeout_s=5)
    app = create_app(settings)
    # The OpenAPI document lists the routes of included routers too (app.routes nests them).
    paths = set(app.openapi()["paths"]) | {r.path for r in app.routes if hasattr(r, "path")}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:   # /readyz turns 200 once the model is loaded and warmed up
            assert thread.is_alive(), "the server exited during start-up"
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.1)
        yield Live(url, port, paths)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _png(size: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- probe and scrape paths ------------------------------------------------------------------

def test_paths_used_by_the_deployment_exist_in_the_app(live):
    assert {"/healthz", "/readyz", "/metrics", "/v1/stylize", "/v1/superres",
            "/v1/models"} <= live.paths
    for overlay in OVERLAYS:
        container = service_container(inference_deployment(render(overlay)))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] in live.paths, (overlay, probe)
    monitor = yaml.safe_load((K8S / "base" / "servicemonitor.yaml").read_text())
    assert {e["path"] for e in monitor["spec"]["endpoints"]} <= live.paths
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "perceptual-service")
    assert job.get("metrics_path", "/metrics") in live.paths


def test_probe_endpoints_answer(live):
    assert httpx.get(f"{live.url}/healthz").status_code == 200
    assert httpx.get(f"{live.url}/readyz").status_code == 200
    metrics = httpx.get(f"{live.url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")


def test_image_healthcheck_script(live):
    script = str(DOCKER / "healthcheck.py")
    ok = subprocess.run([sys.executable, script], env={"SERVICE_PORT": str(live.port)},
                        capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    with socket.socket() as closed:       # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        free_port = closed.getsockname()[1]
    down = subprocess.run([sys.executable, script], env={"SERVICE_PORT": str(free_port)},
                          capture_output=True, timeout=30)
    assert down.returncode == 1


# --- metrics ---------------------------------------------------------------------------------

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                              "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created"), "info": ("_info",),
            "unknown": ("",)}


def _scrape_after_traffic(live: Live) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Sample name -> label names, and label name -> values, after real requests."""
    from prometheus_client.parser import text_string_to_metric_families

    stylized = httpx.post(f"{live.url}/v1/stylize", params={"style": STYLE}, content=_png(),
                          headers={"Content-Type": "image/png"}, timeout=60)
    assert stylized.status_code == 200, stylized.text
    assert stylized.headers["content-type"] == "image/png"
    # A refused request too, so that the rejection counter has a sample.
    assert httpx.post(f"{live.url}/v1/stylize", params={"style": "no-such-style"},
                      content=_png(), headers={"Content-Type": "image/png"}).status_code == 404
    text = httpx.get(f"{live.url}/metrics").text
    labels: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            labels.setdefault(family.name + suffix, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            for key, value in sample.labels.items():
                values.setdefault(key, set()).add(value)
    return labels, values


def test_every_queried_metric_is_exposed(live):
    exposed, label_values = _scrape_after_traffic(live)
    problems = []
    for query in all_queries():
        for selector in query.selectors():
            if selector.metric in EXTERNAL_METRICS:
                continue
            if selector.metric not in exposed:
                problems.append(f"{query.source}: {selector.metric} is not in /metrics")
                continue
            known = exposed[selector.metric] | TARGET_LABELS | {"le"}
            for label, op, value in selector.matchers:
                if exposed[selector.metric] and label not in known:
                    problems.append(f"{query.source}: {selector.metric} has no label {label}")
                # A route filter must match the routes the service reports (paths, not names).
                if label == "route" and op == "Re" and not any(
                        re.fullmatch(value, v) for v in label_values.get("route", ())):
                    problems.append(f"{query.source}: route=~{value!r} matches no route")
    assert not problems, "\n".join(problems)


def test_the_hpa_metric_is_a_per_pod_gauge(live):
    from promql_refs import adapter_rules

    exposed, _ = _scrape_after_traffic(live)
    for rule in adapter_rules():
        name = rule["name"]["as"]
        assert name in exposed
        # No labels of its own: one series per pod, which the adapter maps to the pod.
        assert not exposed[name], f"{name} has labels {exposed[name]}"


def test_model_info_reports_the_digest(live):
    """The README's rollout check reads the digest label of service_model_info."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{live.url}/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text)
                 if f.name == "service_model_info"]
    (sample,) = family.samples
    assert sample.labels["name"] == STYLE
    assert re.fullmatch(r"[0-9a-f]{12,64}", sample.labels["digest"])


# --- the container's command with the cluster's settings -------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_command_with_overlay_settings_serves_and_drains(overlay, tmp_path):
    """What a pod does: the image's CMD with the overlay's ConfigMap, ready, then SIGTERM.

    The GPU overlay runs only where CUDA is available (it sets SERVICE_DEVICE=cuda).
    """
    import torch

    from model_store import ModelStore
    from nets.style_net import StyleNet

    objects = render(overlay)
    settings = find(objects, "ConfigMap")["data"]
    if settings.get("SERVICE_DEVICE") == "cuda" and not torch.cuda.is_available():
        pytest.skip("the gpu overlay needs CUDA")
    pod = inference_deployment(objects)["spec"]["template"]["spec"]
    pre_stop_s = float(service_container(inference_deployment(objects))["lifecycle"]["preStop"]
                       ["exec"]["command"][1])

    store = tmp_path / "models"
    torch.manual_seed(0)
    ModelStore(store).save(StyleNet(norm="instance"), name=STYLE, task="style",
                           architecture="style", options={"norm": "instance"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", ""), **settings,
           # what the image's ENV and the Deployment's env add, adapted to this machine
           "SERVICE_MODEL_STORE": str(store), "SERVICE_HOST": "127.0.0.1",
           "SERVICE_PORT": str(port), "SERVICE_TORCH_THREADS": "1"}
    command = exec_form(next(args for op, args in final_stage() if op == "CMD"))
    assert command[0] == "python"
    process = subprocess.Popen([sys.executable, *command[1:]], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"exited early:\n{process.stdout.read()}"
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready within 2 minutes"
            time.sleep(0.2)
        answer = httpx.post(f"{url}/v1/stylize", params={"style": STYLE}, content=_png(64),
                            headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == 200, answer.text
        health = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")],
                                env={"SERVICE_PORT": str(port)}, capture_output=True, timeout=30)
        assert health.returncode == 0
        models = httpx.get(f"{url}/v1/models").json()
        assert STYLE in str(models)
        metrics = httpx.get(f"{url}/metrics").text
        if settings["SERVICE_DEVICE"] == "cuda":
            (line,) = [x for x in metrics.splitlines()
                       if x.startswith("service_gpu_memory_bytes ")]
            assert float(line.split()[1]) > 0, "GPU memory gauge stays 0 on CUDA"
        assert f'device="{settings["SERVICE_DEVICE"]}' in metrics

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=pod["terminationGracePeriodSeconds"])
        elapsed = time.monotonic() - started
        assert code == 0, process.stdout.read()
        # An idle pod exits well within what the grace period leaves after preStop.
        assert elapsed < pod["terminationGracePeriodSeconds"] - pre_stop_s
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
