"""Prometheus' own checker on the deployment: the compose scrape config, the alert rules, and
unit tests of each alert (alert_tests.yaml).

Needs `promtool` (Debian: `apt-get install prometheus`; or the Prometheus release tarball);
skipped without it. The PromQL of the same files is parsed in any case by promql_refs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import DOCKER, K8S

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def _promtool(*args: str, cwd: Path | None = None) -> None:
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr


def _rule_groups() -> list[dict]:
    return yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())["spec"]["groups"]


def test_compose_prometheus_config():
    _promtool("check", "config", "--syntax-only", str(DOCKER / "prometheus" / "prometheus.yml"))


def test_alert_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rule_groups()}, sort_keys=False))
    _promtool("check", "rules", str(rules))


def test_alerts_fire_when_intended(tmp_path):
    groups = _rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(Path(__file__).with_name("alert_tests.yaml"), tmp_path)
    _promtool("test", "rules", "alert_tests.yaml", cwd=tmp_path)
