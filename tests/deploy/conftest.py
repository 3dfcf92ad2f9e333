"""Shared fixtures of the deployment checks: the rendered manifests, the settings' variables."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
DOCKER = REPO / "docker"
OVERLAYS = ("gpu", "cpu")


def load_all(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomize_command() -> list[str] | None:
    """A kustomize that runs offline: the standalone binary, else the one built into kubectl."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        try:
            subprocess.run([exe, "kustomize", "--help"], capture_output=True, check=True,
                           timeout=30)
        except (subprocess.SubprocessError, OSError):
            return None
        return [exe, "kustomize"]
    return None


def render(overlay: str) -> list[dict[str, Any]]:
    command = kustomize_command()
    if command is None:
        pytest.skip("no kustomize (nor kubectl with kustomize) installed")
    done = subprocess.run([*command, str(K8S / "overlays" / overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"kustomize failed on overlays/{overlay}:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """overlay name -> the objects `kubectl apply -k k8s/overlays/<name>` would create."""
    return {overlay: render(overlay) for overlay in OVERLAYS}


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind
               and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def inference_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "perceptual-service")


def service_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "service")


def settings_env_names() -> dict[str, str]:
    """Environment variable (upper case) -> field of service.settings.Settings.

    Derived from the class itself: env_prefix + field name, or the field's validation aliases
    where it has them (redis_url also reads plain REDIS_URL).
    """
    from pydantic import AliasChoices, AliasPath

    from service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names[(prefix + (field.alias or field_name)).upper()] = field_name
        elif isinstance(alias, str):
            names[alias.upper()] = field_name
        elif isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice.upper()] = field_name
        elif isinstance(alias, AliasPath):  # pragma: no cover - not used by Settings today
            names[str(alias.path[0]).upper()] = field_name
    return names


@pytest.fixture(scope="session")
def settings_env() -> dict[str, str]:
    return settings_env_names()


@pytest.fixture
def clean_service_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No settings variables from the calling shell leak into a Settings() built by a test."""
    import os

    names = set(settings_env_names())
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    yield monkeypatch
