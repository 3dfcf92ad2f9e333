"""k8s/: every manifest is valid, and the manifests agree with each other and with the app.

No cluster here: objects are checked against the Kubernetes OpenAPI schemas offline
(kubernetes-validate), the Prometheus Operator objects against the fields their CRDs require,
and the rest by reading the rendered overlays.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import (
    K8S,
    OVERLAYS,
    find,
    inference_deployment,
    load_all,
    service_container,
)
from dockerfile_parse import final_stage, image_port
from promql_refs import adapter_rules, alert_queries

# The oldest Kubernetes minor the manifests are meant for (unhealthyPodEvictionPolicy needs
# 1.27+; 1.30 is the oldest upstream-supported one at the time of writing) and the newest the
# schema package knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRD_GROUP = "monitoring.coreos.com/"


def _validate(obj: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {e.message} "
                        f"at {'/'.join(map(str, e.path))}")


# --- schemas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates(rendered, overlay):
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor",
            "PrometheusRule"} <= kinds
    for obj in objects:
        if not obj["apiVersion"].startswith(CRD_GROUP):
            _validate(obj)
        assert obj["metadata"].get("namespace") == "perceptual", obj["metadata"]["name"]


def test_base_files_validate_one_by_one():
    """Without kustomize too: every complete object in base/ validates on its own."""
    files = sorted((K8S / "base").glob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        if path.name == "kustomization.yaml":
            continue
        for obj in load_all(path):
            if not obj["apiVersion"].startswith(CRD_GROUP):
                _validate(obj)


def test_overlays_reference_existing_files():
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml")
                                       .read_text())
        for patch in kustomization.get("patches", []):
            assert (K8S / "overlays" / overlay / patch["path"]).is_file()
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    for resource in base["resources"]:
        assert (K8S / "base" / resource).is_file(), resource


# Required fields and shapes of the two CRDs (monitoring.coreos.com/v1), from their OpenAPI
# schemas; additionalProperties: false where a typo would otherwise be silently dropped.
DURATION = (r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
            r"(([0-9]+)ms)?)$")
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "minProperties": 1},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                    },
                }},
            },
        },
    },
}
RULE = {
    "type": "object",
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": DURATION},
        "keep_firing_for": {"type": "string", "pattern": DURATION},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["name", "rules"],
                "properties": {"name": {"type": "string", "minLength": 1},
                               "interval": {"type": "string", "pattern": DURATION},
                               "rules": {"type": "array", "minItems": 1, "items": RULE}},
            }}},
        },
    },
}


def test_prometheus_operator_objects_have_required_fields():
    (monitor,) = load_all(K8S / "base" / "servicemonitor.yaml")
    (rule,) = load_all(K8S / "base" / "prometheusrule.yaml")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    # The schema must bite: a rule without expr is rejected.
    broken = yaml.safe_load(yaml.safe_dump(rule))
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PROMETHEUS_RULE_SCHEMA)


def test_alerts_cover_the_issue_and_parse():
    names = {q.source.removeprefix("alert: ") for q in alert_queries()}
    assert names == {"PerceptualServiceHighP99Latency", "PerceptualServiceHigh5xxRatio",
                     "PerceptualServiceQueueSaturated", "PerceptualServiceNoReadyPods"}
    for query in alert_queries():
        assert query.selectors(), query.source     # parses, and selects something
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    for r in rule["spec"]["groups"][0]["rules"]:
        assert r["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(r["annotations"])


# --- the Deployment --------------------------------------------------------------------------

def _setting(objects: list[dict[str, Any]], field: str) -> float:
    """A numeric setting as the pods get it: from the ConfigMap, else the field's default."""
    from service.settings import Settings

    data = find(objects, "ConfigMap")["data"]
    prefix = Settings.model_config.get("env_prefix", "")
    key = (prefix + field).upper()
    return float(data[key]) if key in data else float(Settings.model_fields[field].default)


def _drain_timeout_s(objects: list[dict[str, Any]]) -> float:
    return _setting(objects, "drain_timeout_s")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_shutdown_fits_in_the_grace_period(rendered, overlay):
    objects = rendered[overlay]
    pod = inference_deployment(objects)["spec"]["template"]["spec"]
    container = service_container(inference_deployment(objects))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_s = pod["terminationGracePeriodSeconds"]
    assert grace_s > pre_stop_s + _drain_timeout_s(objects), (
        "terminationGracePeriodSeconds must cover the preStop sleep plus the service's drain")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security(rendered, overlay):
    deployment = inference_deployment(rendered[overlay])
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    # /tmp is writable: an emptyDir mounted there.
    mounts = {m["mountPath"]: m["name"] for m in service_container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policies_live_on_a_claimed_volume(rendered, overlay):
    objects = rendered[overlay]
    deployment = inference_deployment(objects)
    (settings,) = [o for o in objects if o["kind"] == "ConfigMap"
                   and o["metadata"]["name"].startswith("perceptual-service-settings")]
    folder = settings["data"]["SERVICE_POLICY_FILE"].rsplit("/", 1)[0]
    mounts = {m["mountPath"]: m["name"] for m in service_container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[folder]]["persistentVolumeClaim"]["claimName"]
    assert [o for o in objects if o["kind"] == "PersistentVolumeClaim"
            and o["metadata"]["name"] == claim]


def test_pod_runs_as_the_image_user(rendered):
    user = [args for op, args in final_stage() if op == "USER"][-1]
    uid, _, gid = user.partition(":")
    pod = inference_deployment(rendered["gpu"])["spec"]["template"]["spec"]
    assert str(pod["securityContext"]["runAsUser"]) == uid
    assert str(pod["securityContext"]["runAsGroup"]) == gid


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_a_memory_limit(rendered, overlay):
    for deployment in (o for o in rendered[overlay] if o["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_gpu_overlay_targets_gpu_nodes(rendered):
    deployment = inference_deployment(rendered["gpu"])
    pod = deployment["spec"]["template"]["spec"]
    assert str(service_container(deployment)["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"], "GPU pods need a node selector for GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
               for t in pod["tolerations"])
    assert find(rendered["gpu"], "ConfigMap")["data"]["SERVICE_DEVICE"] == "cuda"
    assert service_container(deployment)["image"].endswith(":gpu")


def test_cpu_overlay_needs_no_gpu(rendered):
    deployment = inference_deployment(rendered["cpu"])
    pod = deployment["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in service_container(deployment)["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert find(rendered["cpu"], "ConfigMap")["data"]["SERVICE_DEVICE"] == "cpu"
    assert service_container(deployment)["image"].endswith(":cpu")


def test_probes(rendered):
    container = service_container(inference_deployment(rendered["gpu"]))
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


def test_the_hpa_owns_the_replica_count(rendered):
    """A replicas field would be re-applied over the HPA's choice on every kubectl apply."""
    for overlay in OVERLAYS:
        assert "replicas" not in inference_deployment(rendered[overlay])["spec"]


# --- settings --------------------------------------------------------------------------------

def _pod_env_names(deployment: dict[str, Any]) -> set[str]:
    return {e["name"] for c in deployment["spec"]["template"]["spec"]["containers"]
            for e in c.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configured_variables_are_settings_fields(rendered, overlay, settings_env,
                                                  clean_service_env):
    from service.settings import Settings

    objects = rendered[overlay]
    data = find(objects, "ConfigMap")["data"]
    unknown = sorted(set(data) - set(settings_env))
    assert not unknown, f"ConfigMap keys that no Settings field reads: {unknown}"
    deployment = inference_deployment(objects)
    unknown = sorted(_pod_env_names(deployment) - set(settings_env))
    assert not unknown, f"container env that no Settings field reads: {unknown}"
    # ...and their values pass the settings' own validation.
    for key, value in data.items():
        clean_service_env.setenv(key, value)
    settings = Settings()
    assert settings.device == data["SERVICE_DEVICE"]
    # The envFrom actually points at the generated ConfigMap.
    config_map = find(objects, "ConfigMap")["metadata"]["name"]
    refs = [s["configMapRef"]["name"] for s in service_container(deployment)["envFrom"]]
    assert refs == [config_map]


def test_redis_url_points_at_the_redis_service(rendered):
    objects = rendered["gpu"]
    container = service_container(inference_deployment(objects))
    ref = next(e for e in container["env"] if e["name"] == "REDIS_URL")["valueFrom"]
    secret = find(objects, "Secret", ref["secretKeyRef"]["name"])
    import base64

    url = base64.b64decode(secret["data"][ref["secretKeyRef"]["key"]]).decode()
    match = re.fullmatch(r"rediss?://(?:[^@]*@)?([^:/]+):(\d+)(?:/\d+)?", url)
    assert match, url
    redis_service = find(objects, "Service", match.group(1))
    assert int(match.group(2)) in {p["port"] for p in redis_service["spec"]["ports"]}


# --- selectors, ports, autoscaling -----------------------------------------------------------

def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in objects if d["kind"] == "Deployment"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_pick_exactly_the_inference_pods(rendered, overlay):
    objects = rendered[overlay]
    pods = _pod_labels(objects)
    selectors = {
        "Service": find(objects, "Service", "perceptual-service")["spec"]["selector"],
        "PodDisruptionBudget": find(objects, "PodDisruptionBudget")["spec"]["selector"]
        ["matchLabels"],
        "NetworkPolicy": find(objects, "NetworkPolicy", "perceptual-service")["spec"]
        ["podSelector"]["matchLabels"],
        "Deployment": inference_deployment(objects)["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        chosen = {name for name, labels in pods.items() if _selects(selector, labels)}
        assert chosen == {"perceptual-service"}, f"{kind} selects {chosen}"
    redis_selector = find(objects, "Service", "perceptual-redis")["spec"]["selector"]
    assert {n for n, labels in pods.items() if _selects(redis_selector, labels)} == {
        "perceptual-redis"}
    # The ServiceMonitor selects the Service (by its labels) and scrapes a named port of it.
    service = find(objects, "Service", "perceptual-service")
    monitor = find(objects, "ServiceMonitor")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not _selects(monitor["spec"]["selector"]["matchLabels"],
                        find(objects, "Service", "perceptual-redis")["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_line_up(rendered, overlay):
    objects = rendered[overlay]
    container = service_container(inference_deployment(objects))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = find(objects, "Service", "perceptual-service")
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports
    policy = find(objects, "NetworkPolicy", "perceptual-service")
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {ports["http"]}, "only the service port is open"
    # Redis: only the inference pods get in, on the Redis port; the service may reach it.
    redis_pod = _pod_labels(objects)["perceptual-redis"]
    redis_policy = find(objects, "NetworkPolicy", "perceptual-redis")
    (rule,) = redis_policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert _selects(peer["podSelector"]["matchLabels"], _pod_labels(objects)["perceptual-service"])
    redis_port = find(objects, "Service", "perceptual-redis")["spec"]["ports"][0]["port"]
    assert [p["port"] for p in rule["ports"]] == [redis_port]
    egress_to_redis = [r for r in policy["spec"]["egress"]
                       if any(_selects(t.get("podSelector", {}).get("matchLabels", {"x": "y"}),
                                       redis_pod) for t in r.get("to", []))]
    assert egress_to_redis and egress_to_redis[0]["ports"][0]["port"] == redis_port


def test_container_port_is_the_image_port(rendered):
    container = service_container(inference_deployment(rendered["gpu"]))
    assert {p["containerPort"] for p in container["ports"]} == {image_port()}


def test_hpa_scales_on_the_adapter_metric_below_the_queue_limit(rendered):
    objects = rendered["gpu"]
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "perceptual-service")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    exposed_as = {rule["name"]["as"] for rule in adapter_rules()}
    assert metric["pods"]["metric"]["name"] in exposed_as
    average = float(metric["pods"]["target"]["averageValue"])
    # Pods are added before either admission limit refuses requests (429 queue_full).
    for field in ("queue_limit", "max_inflight"):
        assert 0 < average < _setting(objects, field), field
    assert hpa["spec"]["minReplicas"] >= 2
    # The PDB allows a drain whatever the replica count.
    assert find(objects, "PodDisruptionBudget")["spec"].get("maxUnavailable") == 1


def test_queue_alert_threshold_tracks_the_queue_limit(rendered):
    data = find(rendered["gpu"], "ConfigMap")["data"]
    (expr,) = [q.expr for q in alert_queries() if q.source.endswith("QueueSaturated")]
    limits = re.findall(r"service_queue_depth\)\s*>\s*[\d.]+\s*\*\s*(\d+)", expr)
    assert limits == [data["SERVICE_QUEUE_LIMIT"]], (
        "the saturation alert's queue limit differs from SERVICE_QUEUE_LIMIT")


def test_no_ready_pods_alert_names_the_deployment():
    (query,) = [q for q in alert_queries() if q.source.endswith("NoReadyPods")]
    (selector,) = query.selectors()
    assert ("deployment", "Equal", "perceptual-service") in selector.matchers


def test_alert_label_values_are_ones_the_service_uses():
    """reason="queue_full" must be a rejection reason the service actually records."""
    from service.errors import ServiceError

    def subclasses(cls: type) -> list[type]:
        return [s for c in cls.__subclasses__() for s in (c, *subclasses(c))]

    reasons = {c.reason for c in subclasses(ServiceError)}
    for query in alert_queries():
        for selector in query.selectors():
            for label, op, value in selector.matchers:
                if label == "reason" and op == "Equal":
                    assert value in reasons, f"{query.source}: no rejection reason {value!r}"


def test_readmes_explain_every_configured_variable(rendered):
    """Every knob set in the deployment is explained in k8s/README.md or docker/README.md."""
    from dockerfile_parse import final_stage as image_stage

    readmes = (K8S / "README.md").read_text() + (K8S.parent / "docker" / "README.md").read_text()
    configured = set()
    for overlay in OVERLAYS:
        configured |= set(find(rendered[overlay], "ConfigMap")["data"])
        configured |= _pod_env_names(inference_deployment(rendered[overlay]))
    compose = yaml.safe_load((K8S.parent / "docker" / "compose.yaml").read_text())
    for service in compose["services"].values():
        if "build" in service:
            configured |= set(service["environment"])
    for op, args in image_stage():
        if op == "ENV":
            configured |= {w.split("=")[0] for w in args.split() if w.startswith("SERVICE_")}
    missing = sorted(v for v in configured if f"`{v}`" not in readmes)
    assert not missing, f"not explained in the READMEs: {missing}"
