"""Every PromQL expression the deployment ships, parsed, and the series each one selects.

Sources: the Grafana dashboard, the PrometheusRule alerts and the prometheus-adapter rule of
the HPA. Parsing uses the `promql-parser` package (a port of Prometheus' own parser), so a
syntax error fails here and not in a Prometheus nobody is watching.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "perceptual-service.json"
PROMETHEUS_RULE = REPO / "k8s" / "base" / "prometheusrule.yaml"
ADAPTER_VALUES = REPO / "k8s" / "prometheus-adapter" / "values.yaml"

# Labels Prometheus itself (job, instance) or the Prometheus Operator (namespace, pod,
# service, container, endpoint) attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container",
                           "endpoint"})

# Series that do not come from the service, and where they come from.
EXTERNAL_METRICS = {
    "kube_deployment_status_replicas_available": "kube-state-metrics",
}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]   # (label, op name, value)


@dataclass(frozen=True)
class Query:
    source: str       # e.g. "dashboard: Batch size distribution"
    expr: str         # as it will be sent (template variables substituted)

    def selectors(self) -> list[Selector]:
        found: list[Selector] = []

        def visit(node: object) -> bool:
            if isinstance(node, promql_parser.VectorSelector):
                # op: Equal, NotEqual, Re or NotRe
                matchers = tuple((m.name, str(m.op).rsplit(".", 1)[-1], m.value)
                                 for m in node.matchers.matchers)
                name = node.name or next((v for k, _, v in matchers if k == "__name__"), "")
                found.append(Selector(name, tuple(m for m in matchers if m[0] != "__name__")))
            return True

        promql_parser.walk(promql_parser.parse(self.expr), visit, None)
        return found


# Grafana's built-in interval variables, replaced by a duration as Grafana would.
_GRAFANA_VARS = re.compile(r"\$__(?:rate_interval|interval|range)"
                           r"|\$\{__(?:rate_interval|interval|range)\}")


def dashboard_queries() -> list[Query]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if "expr" in target:
                queries.append(Query(f"dashboard: {panel['title']}",
                                     _GRAFANA_VARS.sub("1m", target["expr"])))
    return queries


def _panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))   # collapsed rows nest their panels
    return out


def alert_queries() -> list[Query]:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    return [Query(f"alert: {r.get('alert') or r.get('record')}", r["expr"])
            for group in rule["spec"]["groups"] for r in group["rules"]]


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def adapter_queries() -> list[Query]:
    """The adapter's seriesQuery, and its metricsQuery with the templating the adapter does."""
    queries = []
    for rule in adapter_rules():
        series = rule["seriesQuery"]
        queries.append(Query("adapter: seriesQuery", series))
        metric = Query("", series).selectors()[0].metric
        expr = (rule["metricsQuery"]
                .replace("<<.Series>>", metric)
                .replace("<<.LabelMatchers>>", 'namespace="perceptual",pod=~"perceptual-.*"')
                .replace("<<.GroupBy>>", "pod"))
        assert "<<" not in expr, f"unknown adapter template in {rule['metricsQuery']!r}"
        queries.append(Query("adapter: metricsQuery", expr))
    return queries


def all_queries() -> list[Query]:
    return dashboard_queries() + alert_queries() + adapter_queries()
