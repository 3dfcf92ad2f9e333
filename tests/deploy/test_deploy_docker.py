"""Dockerfile, .dockerignore and docker/ (compose, Prometheus, Grafana), checked without Docker."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import DOCKER, REPO
from dockerfile_parse import (
    DOCKERFILE,
    copy_sources,
    exec_form,
    final_stage,
    global_args,
    ignored,
    image_port,
    stage_args,
    stages,
)
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from promql_refs import dashboard_queries

COMPOSE = DOCKER / "compose.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _tool(name: str) -> str:
    """A console script of this environment, else one on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def _dependency_spec(name: str) -> SpecifierSet:
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{name}\s*([<>=!~].*)", requirement)
        if match:
            return SpecifierSet(match.group(1))
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


# --- Dockerfile ------------------------------------------------------------------------------

def test_hadolint_is_clean():
    done = subprocess.run([_tool("hadolint"), "--no-color", "--failure-threshold", "style",
                           str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_base_matches_the_torch_cuda_build():
    cuda_image = global_args()["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-\w+(?:-\w+)?-ubuntu\d+\.\d+", cuda_image)
    assert match, cuda_image
    build = stage_args("build")
    assert build["TORCH_CUDA"] == f"cu{match.group(1)}{match.group(2)}", (
        "the CUDA base image and the torch wheel index must name the same CUDA release")


def test_pinned_torch_is_within_the_project_range():
    build = stage_args("build")
    assert Version(build["TORCH_VERSION"]) in _dependency_spec("torch")
    assert Version(build["TORCHVISION_VERSION"]) in _dependency_spec("torchvision")


def test_variants_are_selected_by_build_arg():
    names = [name for name, _ in stages()]
    assert {"os-gpu", "os-cpu", "build", "runtime"} <= set(names)
    assert names[-1] == "runtime", "the default target (last stage) is the runtime image"
    assert global_args()["VARIANT"] == "gpu"


def test_runtime_stage():
    body = final_stage()
    ops = [op for op, _ in body]
    # Non-root, by number (Kubernetes' runAsNonRoot cannot resolve names).
    user = [args for op, args in body if op == "USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    # `python -m service`, listening on all interfaces on the exposed port.
    command = exec_form(next(args for op, args in body if op == "CMD"))
    assert command[:3] == ["python", "-m", "service"]
    listen = _image_env() | _flags(command[3:])
    assert listen["SERVICE_HOST"] == "0.0.0.0"
    assert int(listen["SERVICE_PORT"]) == image_port()
    # HEALTHCHECK runs the stdlib probe of /healthz that the image copies in.
    healthcheck = next(args for op, args in body if op == "HEALTHCHECK")
    probe = exec_form(healthcheck)
    assert probe[0] == "python" and Path(probe[1]).name == "healthcheck.py"
    assert "/healthz" in (DOCKER / "healthcheck.py").read_text()
    assert any(op == "COPY" and "docker/healthcheck.py" in args and probe[1] in args
               for op, args in body)
    # No build tooling in the final stage: it only copies what the build stage made.
    runs = " ".join(args for op, args in body if op == "RUN")
    for tool in ("pip install", "build-essential", "gcc", "python3-venv", "python3-pip"):
        assert tool not in runs
    assert "COPY" in ops and "ENV" in ops
    assert _image_env()["SERVICE_MODEL_STORE"] == "/models"
    assert any(op == "COPY" and args.endswith(" /models") for op, args in body)


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in final_stage():
        if op == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def _flags(argv: list[str]) -> dict[str, str]:
    """`--host H --port P` as the settings they override."""
    return {"SERVICE_" + flag.removeprefix("--").upper(): value
            for flag, value in zip(argv[::2], argv[1::2], strict=True)}


def test_image_settings_are_settings_fields(settings_env, clean_service_env):
    from service.settings import Settings

    env = {k: v for k, v in _image_env().items() if k.startswith("SERVICE_")}
    unknown = sorted(set(env) - set(settings_env))
    assert not unknown, f"ENV that no Settings field reads: {unknown}"
    for key, value in env.items():
        clean_service_env.setenv(key, value)
    settings = Settings()
    assert settings.port == image_port() and str(settings.model_store) == "/models"


def test_copied_paths_exist_and_are_in_the_build_context():
    for source in copy_sources():
        if "*" in source:           # optional files (README.md*) may be missing
            continue
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path"
        probe = source if path.is_file() else f"{source.rstrip('/')}/__init__.py"
        assert not ignored(probe), f"COPY {source}: excluded by .dockerignore"


def test_every_project_package_is_copied():
    """A package added to pyproject.toml must reach the image too."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = {s.strip("/") for s in copy_sources()}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "runs/x/ckpt.pt",
                                  "tests/deploy/conftest.py", "model.onnx", "data/coco/1.jpg",
                                  "service/__pycache__/app.cpython-311.pyc", "k8s/README.md"])
def test_dockerignore_keeps_out(path):
    assert ignored(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "service/app.py",
                                  "model_store/udnie/model.safetensors",
                                  "docker/healthcheck.py"])
def test_dockerignore_keeps_in(path):
    assert not ignored(path)


# --- compose ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_validates_against_the_compose_spec(tmp_path, compose):
    checker = _tool("check-jsonschema")
    done = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # The schema must bite: a misspelt service key is rejected.
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["healthchek"] = broken["services"]["redis"].pop("healthcheck")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    done = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec",
                           str(tmp_path / "compose.yaml")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0


def _app_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if "build" in s}


def test_compose_has_a_gpu_and_a_cpu_profile(compose):
    services = _app_services(compose)
    by_profile = {tuple(s["profiles"]): s for s in services.values()}
    assert set(by_profile) == {("gpu",), ("cpu",)}
    gpu, cpu = by_profile[("gpu",)], by_profile[("cpu",)]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in cpu
    assert gpu["build"]["args"]["VARIANT"] == "gpu" and cpu["build"]["args"]["VARIANT"] == "cpu"
    assert (REPO / "docker" / gpu["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE


def test_compose_environment_is_settings_fields(compose, settings_env, clean_service_env):
    from service.settings import Settings

    for name, service in _app_services(compose).items():
        environment = service["environment"]
        unknown = sorted(set(environment) - set(settings_env))
        assert not unknown, f"{name}: variables no Settings field reads: {unknown}"
        for key, value in environment.items():
            clean_service_env.setenv(key, str(value))
        settings = Settings()
        assert settings.redis_url == environment["REDIS_URL"]
        # The stop grace period covers the drain.
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > settings.drain_timeout_s
        # Read-only root, writable /tmp, as on Kubernetes; the published port is the image's.
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert any(p.endswith(f":{image_port()}") for p in service["ports"])


def test_compose_redis_is_a_bounded_lru_cache(compose):
    command = compose["services"]["redis"]["command"]
    args = dict(zip(command[1::2], command[2::2], strict=False))
    assert re.fullmatch(r"\d+[kmg]b", args["--maxmemory"])
    assert args["--maxmemory-policy"] in ("allkeys-lru", "volatile-lru")
    assert args["--save"] == "" and args["--appendonly"] == "no"
    # The service's REDIS_URL names it.
    for service in _app_services(compose).values():
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:6379")


def test_compose_bind_mounts_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_scrapes_the_service(compose):
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "perceptual-service"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert int(port) == image_port()
    for service in _app_services(compose).values():
        assert host in service["networks"]["default"]["aliases"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


# --- Grafana ---------------------------------------------------------------------------------

def test_grafana_provisioning(compose):
    datasources = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (DOCKER / "grafana/provisioning/dashboards/perceptual-service.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == path
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    environment = compose["services"]["grafana"]["environment"]
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DOCKER / "grafana/dashboards" / Path(home).relative_to(path)).is_file()

    dashboard = json.loads((DOCKER / "grafana/dashboards/perceptual-service.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_shows_what_the_issue_asks_for():
    queries = dashboard_queries()
    exprs = " ".join(q.expr for q in queries)
    for quantile in ("0.5", "0.95", "0.99"):
        assert re.search(rf"histogram_quantile\({quantile}, sum by \(route, le\) "
                         r"\(rate\(service_request_duration_seconds_bucket", exprs), quantile
    needed = {
        "request rate": "service_request_duration_seconds_count",
        "batch size distribution": "service_batch_size_bucket",
        "queue depth": "service_queue_depth",
        "queue wait": "service_queue_wait_seconds_bucket",
        "rejections": "service_rejections_total",
        "cache hits": "service_cache_hits_total",
        "cache misses": "service_cache_misses_total",
        "GPU memory": "service_gpu_memory_bytes",
    }
    selected = {s.metric for q in queries for s in q.selectors()}
    missing = {what for what, metric in needed.items() if metric not in selected}
    assert not missing, f"dashboard lacks: {sorted(missing)}"
    assert "sum by (reason)" in exprs
