"""The Helm chart, rendered offline: it lints, refuses bad values, grants exactly the RBAC the operator
uses, hardens every pod, hands the operator settings it can parse, and matches manifests/ and crd().

Rendering goes through scripts/render_manifests.py, so the tests and the generator agree: a real
`helm` on PATH when there is one, else helm-python-sdk (Helm v4's Go SDK in a shared library).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from kompressor.crd import API_VERSION, KIND, WEB_INPUT_FORMATS, InputFormat, crd, parse_spec
from kompressor.messages import JobRef
from kompressor_operator.metrics import OperatorMetrics
from kompressor_worker.metrics import Metrics
from tests.dashboard import dashboard_series, missing_series

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kompressor"
EXAMPLES = ROOT / "examples"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "render_manifests", ROOT / "scripts" / "render_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

if not shutil.which("helm") and importlib.util.find_spec("helm_python") is None:
    pytest.skip(
        "neither a `helm` binary nor helm-python-sdk: pip install helm-python-sdk", allow_module_level=True
    )

RELEASE_NS = gen.NAMESPACE
DEV = {"dev": {"enabled": True}}
WATCHING = {"watchNamespaces": ["shop", "media"]}
EVERYTHING = {
    "dev": {"enabled": True},
    "watchNamespaces": ["shop", "media"],
    "grafana": {"dashboard": {"enabled": True}},
    "prometheus": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    "networkPolicy": {"enabled": True},
}
VALUE_SETS = {"defaults": {}, "dev": DEV, "watchNamespaces": WATCHING, "everything": EVERYTHING}

_cache: dict[str, list[dict[str, Any]]] = {}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    key = json.dumps(values or {}, sort_keys=True)
    if key not in _cache:
        _cache[key] = gen.render_chart(values or {})
    return _cache[key]


def objects(values: dict[str, Any] | None, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in render(values) if obj["kind"] == kind]


def operator_deployment(values: dict[str, Any] | None = None) -> dict[str, Any]:
    (deployment,) = [d for d in objects(values, "Deployment") if d["metadata"]["name"] == "kompressor"]
    return deployment


def operator_container(values: dict[str, Any] | None = None) -> dict[str, Any]:
    (container,) = operator_deployment(values)["spec"]["template"]["spec"]["containers"]
    return container


# --- lint and render ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_clean(values):
    assert gen.lint_chart(values) == []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_renders_labelled_objects(values):
    rendered = render(values)
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"} <= {
        o["kind"] for o in rendered
    }
    for obj in rendered:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kompressor"
        assert labels["app.kubernetes.io/instance"] == "kompressor"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kompressor-0.1.0"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace"), (
                f"{obj['kind']} {obj['metadata']['name']} has no namespace"
            )


def test_defaults_render_only_the_operator():
    kinds = sorted(o["kind"] for o in render({}))
    assert kinds == sorted(["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"])


def test_dev_adds_rabbitmq_seaweedfs_and_one_secret_per_name_and_namespace():
    names = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in render(DEV)}
    for kind in ("Deployment", "Service"):
        assert (kind, RELEASE_NS, "kompressor-rabbitmq") in names
        assert (kind, RELEASE_NS, "kompressor-seaweedfs") in names
    secrets = [o for o in objects(DEV, "Secret")]
    keys = [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in secrets]
    assert len(keys) == len(set(keys)), "two Secrets with the same name in one namespace"
    # The operator's and the workers' Secrets share their default names: one of each serves both.
    broker = next(s for s in secrets if s["metadata"]["name"] == "kompressor-broker")
    assert broker["stringData"]["url"].startswith("amqp://kompressor:kompressor-dev@kompressor-rabbitmq.")
    storage = next(s for s in secrets if s["metadata"]["name"] == "kompressor-storage")
    assert set(storage["stringData"]) == {"accessKeyId", "secretAccessKey"}
    env = {e["name"]: e for e in operator_container(DEV)["env"]}
    assert (
        env["KOMPRESSOR_STORAGE__ENDPOINT_URL"]["value"] == "http://kompressor-seaweedfs.kompressor.svc:8333"
    )


def test_dev_creates_worker_secrets_in_every_watched_namespace():
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in objects(EVERYTHING, "Secret")}
    for namespace in ("shop", "media"):
        assert {(namespace, "kompressor-broker"), (namespace, "kompressor-storage")} <= secrets


def test_dev_without_a_worker_storage_secret_creates_none_for_the_workers():
    values = {"dev": {"enabled": True}, "worker": {"storageSecret": ""}, "watchNamespaces": ["shop"]}
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in objects(values, "Secret")}
    assert ("shop", "kompressor-broker") in secrets and ("shop", "kompressor-storage") not in secrets
    assert (RELEASE_NS, "kompressor-storage") in secrets  # the operator's own still comes


def test_dev_refuses_one_secret_name_for_broker_and_storage():
    values = {"dev": {"enabled": True}, "worker": {"storageSecret": "kompressor-broker"}}
    with pytest.raises(gen.RenderError, match="both the AMQP URL and the S3 credentials"):
        gen.render_chart(values)


def test_grafana_dashboard_is_opt_in_and_labelled_for_the_sidecar():
    assert objects({}, "ConfigMap") == []
    (configmap,) = objects({"grafana": {"dashboard": {"enabled": True}}}, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["kompressor.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "kompressor.json").read_text())


def test_dashboard_covers_every_metric_and_the_panels_people_ask_for():
    dashboard = json.loads((CHART / "dashboards" / "kompressor.json").read_text())
    # Every series the dashboard queries is one our metrics define, with the labels it uses (the
    # real /metrics of a running worker and operator: tests/integration and tests/e2e).
    job = JobRef(namespace="shop", name="catalog", uid="u")
    operator, worker = OperatorMetrics(), Metrics(job.namespace, job.name)
    operator.observe(job, outstanding=3, desired=1)
    operator.scaled(job, "up")
    worker.task_ended("failed", "decode_error")
    worker.task_seconds.observe(0.2)
    worker.bytes_in.inc(10)
    worker.bytes_out.inc(3)
    exposition = generate_latest(operator.registry).decode() + generate_latest(worker.registry).decode()
    wanted = dashboard_series()
    assert missing_series(exposition, wanted) == []
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ("backlog", "replicas", "images per second", "bytes saved", "failures by reason"):
        assert word in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def _worker_pod(namespace: str = "shop") -> dict[str, Any]:
    from kompressor_operator.builders import worker_deployment
    from kompressor_operator.settings import WorkerDefaults

    spec = parse_spec({"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}})
    job = JobRef(namespace=namespace, name="catalog", uid="u")
    return worker_deployment(job, spec, WorkerDefaults(), owner=None, replicas=1)["spec"]["template"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def test_monitors_are_opt_in_select_the_operator_service_and_the_worker_pods_and_keep_their_labels():
    assert not [o for o in render({}) if o["kind"] in ("ServiceMonitor", "PodMonitor")]
    (monitor,) = objects(EVERYTHING, "ServiceMonitor")
    services = [
        o
        for o in objects(EVERYTHING, "Service")
        if _selects(monitor["spec"]["selector"], o["metadata"]["labels"])
    ]
    assert [s["spec"]["ports"][0]["name"] for s in services] == [monitor["spec"]["endpoints"][0]["port"]]
    (pods,) = objects(EVERYTHING, "PodMonitor")
    assert pods["spec"]["namespaceSelector"] == {"matchNames": ["shop", "media"]}
    assert objects({"prometheus": {"podMonitor": {"enabled": True}}}, "PodMonitor")[0]["spec"][
        "namespaceSelector"
    ] == {"any": True}
    worker = _worker_pod()
    assert _selects(pods["spec"]["selector"], worker["metadata"]["labels"])
    endpoint = pods["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in {p["name"] for p in worker["spec"]["containers"][0]["ports"]}
    # The series name the job's namespace in `namespace`: Prometheus must not rename it.
    assert endpoint["honorLabels"] is True and monitor["spec"]["endpoints"][0]["honorLabels"] is True


def _ports(rules: list[dict[str, Any]]) -> set[int]:
    return {port["port"] for rule in rules for port in rule["ports"]}


def test_network_policies_are_opt_in_and_allow_the_operator_and_workers_only_what_they_need():
    assert not objects({}, "NetworkPolicy")
    broker = [{"ipBlock": {"cidr": "192.0.2.10/32"}}]
    values = {
        **EVERYTHING,
        "networkPolicy": {"enabled": True, "broker": {"to": broker, "ports": [{"port": 5672}]}},
    }
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p for p in objects(values, "NetworkPolicy")
    }
    assert set(policies) == {
        (RELEASE_NS, "kompressor-operator"),
        ("shop", "kompressor-workers"),
        ("media", "kompressor-workers"),
    }
    operator = policies[(RELEASE_NS, "kompressor-operator")]["spec"]
    assert _selects(
        operator["podSelector"], operator_deployment(values)["spec"]["template"]["metadata"]["labels"]
    )
    assert _ports(operator["egress"]) == {443, 6443, 5672, 8333, 53}
    assert _ports(operator["ingress"]) == {9090, 8080}
    workers = policies[("shop", "kompressor-workers")]["spec"]
    assert _selects(workers["podSelector"], _worker_pod()["metadata"]["labels"])
    assert 6443 not in _ports(workers["egress"])  # no API server: workers hold no token
    assert _ports(workers["ingress"]) == {8080}
    for spec in (operator, workers):
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        (amqp,) = [rule for rule in spec["egress"] if _ports([rule]) == {5672}]
        assert amqp["to"] == broker
        (dns,) = [rule for rule in spec["egress"] if _ports([rule]) == {53}]
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def _scanner_skips(values: dict[str, Any]) -> dict[str, str]:
    annotations = operator_deployment(values)["metadata"].get("annotations") or {}
    pairs = [v.partition("=") for k, v in annotations.items() if k.startswith("checkov.io/skip")]
    return {check: reason for check, _, reason in pairs}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_policy_scanner_skip_names_a_rule_and_says_why(values):
    """`checkov -d manifests/ --framework kubernetes` passes with these skips (README); each says why."""
    skips = _scanner_skips(values)
    assert skips
    for check, reason in skips.items():
        assert re.fullmatch(r"CKV2?_K8S_[0-9]+", check), check
        assert len(reason.split()) >= 6, (check, reason)
    assert all(
        o["metadata"]["name"] == "kompressor" and o["kind"] == "Deployment"
        for o in render(values)
        if any(k.startswith("checkov.io/") for k in (o["metadata"].get("annotations") or {}))
    )


def test_a_skip_goes_when_the_values_meet_the_rule():
    assert {"CKV_K8S_43", "CKV2_K8S_6"} <= set(_scanner_skips({}))
    digest = "sha256:" + "a" * 64
    pinned = {"operator": {"image": {"digest": digest}}, "networkPolicy": {"enabled": True}}
    assert not {"CKV_K8S_43", "CKV2_K8S_6"} & set(_scanner_skips(pinned))
    assert operator_container(pinned)["image"] == f"ghcr.io/kompressor/operator@{digest}"


def test_notes_tell_how_to_run_and_watch_a_first_job():
    helm = pytest.importorskip("helm_python", reason="NOTES.txt is rendered with helm-python-sdk")
    with helm.Chart.load(CHART) as chart:
        notes = chart.render({}, name="kompressor", namespace=RELEASE_NS)["kompressor/templates/NOTES.txt"]
    assert "kubectl apply -n kompressor -f examples/s3-to-webp.yaml" in notes
    assert "kubectl get compjob -n kompressor -w" in notes


# --- values.schema.json ---------------------------------------------------------------------------

BAD_VALUES = {
    "negative replicas": ({"operator": {"replicas": -1}}, "/operator/replicas"),
    "four operators": ({"operator": {"replicas": 4}}, "/operator/replicas"),
    "replicas of the wrong type": ({"operator": {"replicas": "one"}}, "/operator/replicas"),
    "unknown top-level key": ({"replicaCount": 2}, "replicaCount"),
    "unknown operator key": ({"operator": {"replica": 1}}, "replica"),
    "bad pull policy": ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    "bad worker pull policy": ({"worker": {"image": {"pullPolicy": "always"}}}, "/worker/image/pullPolicy"),
    "numeric image tag": ({"worker": {"image": {"tag": 1.2}}}, "/worker/image/tag"),
    "max workers of the wrong type": ({"operator": {"maxTotalWorkers": "many"}}, "/operator/maxTotalWorkers"),
    "negative max workers": ({"operator": {"maxTotalWorkers": -5}}, "/operator/maxTotalWorkers"),
    "zero poll interval": ({"operator": {"pollIntervalSeconds": 0}}, "/operator/pollIntervalSeconds"),
    "port out of range": ({"worker": {"healthPort": 70000}}, "/worker/healthPort"),
    "namespace not a DNS label": ({"watchNamespaces": ["Shop_1"]}, "/watchNamespaces/0"),
    "namespaces not a list": ({"watchNamespaces": "shop"}, "/watchNamespaces"),
    "EPS input format": ({"allowedInputFormats": ["jpeg", "eps"]}, "/allowedInputFormats/1"),
    "no input format": ({"allowedInputFormats": []}, "/allowedInputFormats"),
    "empty broker secret": ({"broker": {"secretName": ""}}, "/broker/secretName"),
    "dev flag of the wrong type": ({"dev": {"enabled": "yes"}}, "/dev/enabled"),
    "bad log format": ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    "endpoint without scheme": ({"storage": {"endpointURL": "seaweedfs:8333"}}, "/storage/endpointURL"),
    "allowed endpoint not a CIDR": ({"storage": {"endpointAllowNetworks": ["s3.example.com"]}}, "/storage"),
    "bad cpu quantity": ({"operator": {"resources": {"limits": {"cpu": "lots"}}}}, "/operator/resources"),
    "bad worker log level": ({"worker": {"logLevel": "verbose"}}, "/worker/logLevel"),
    "worker extraEnv sets the queue": (
        {"worker": {"extraEnv": [{"name": "KOMPRESSOR_QUEUE", "value": "x"}]}},
        "/worker/extraEnv/0/name",
    ),
    "worker extraVolumes reuses tmp": (
        {"worker": {"extraVolumes": [{"name": "tmp"}]}},
        "/worker/extraVolumes",
    ),
    "unknown affinity kind": ({"worker": {"affinity": {"nodeAfinity": {}}}}, "/worker/affinity"),
    "worker service account not a name": (
        {"worker": {"serviceAccountName": "Team A"}},
        "/worker/serviceAccountName",
    ),
}


@pytest.mark.parametrize(("values", "field"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(values, field):
    with pytest.raises(gen.RenderError) as caught:
        gen.render_chart(values)
    message = str(caught.value)
    assert "schema" in message
    assert field in message, message


def test_every_value_has_a_comment():
    """A comment right above each key covers it and everything under it; every leaf must be covered."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str, bool]] = []  # (indent, key, covered)
    uncovered = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = lines[number - 1].strip() if number else ""
        covered = previous.startswith("#") or any(c for _, _, c in stack)
        path = ".".join([k for _, k, _ in stack] + [key])
        stack.append((indent, key, covered))
        is_leaf = rest not in ("", "|", ">") or _next_is_list(lines, number)
        if is_leaf and not covered:
            uncovered.append(path)
    assert uncovered == []


def _next_is_list(lines: list[str], number: int) -> bool:
    for line in lines[number + 1 :]:
        if line.strip() and not line.strip().startswith("#"):
            return line.strip().startswith("- ")
    return False


def test_default_values_pass_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)


# --- the operator Deployment ----------------------------------------------------------------------


def test_operator_is_one_kopf_standalone_replica_recreated_on_upgrade():
    deployment = operator_deployment()
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = operator_container()
    assert container["command"] == ["kopf", "run"]
    args = container["args"]
    assert "--standalone" in args
    assert "--all-namespaces" in args
    assert args[-2:] == ["-m", "kompressor_operator.handlers"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_two_operators_elect_a_leader_through_kopf_peering():
    """operator.replicas 2: kopf runs --peering named after the release (not --standalone), names
    itself by its pod, and may make, watch and patch its ClusterKopfPeering, and nothing more."""
    values = {"operator": {"replicas": 2}}
    deployment = operator_deployment(values)
    assert deployment["spec"]["replicas"] == 2
    args = operator_container(values)["args"]
    assert "--peering=kompressor" in args and "--standalone" not in args
    env = {e["name"]: e for e in operator_container(values)["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (cluster_role,) = objects({**WATCHING, **values}, "ClusterRole")
    assert _grants(cluster_role) == CLUSTER_RULES | PEERING_RULES
    assert "POD_ID" not in {e["name"] for e in operator_container()["env"]}
    peering_crd = yaml.safe_load(
        (ROOT / "charts/kompressor/crds/clusterkopfpeerings.kopf.dev.yaml").read_text()
    )
    assert (peering_crd["spec"]["group"], peering_crd["spec"]["names"]["plural"]) == (
        "kopf.dev",
        "clusterkopfpeerings",
    )


def test_operator_watches_only_the_listed_namespaces():
    args = operator_container(WATCHING)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=shop", "--namespace=media"]


def _operator_settings_class() -> Any:
    try:
        from kompressor_operator.settings import OperatorSettings
    except ModuleNotFoundError:  # the package is not installed: import it from its source folder
        sys.path.insert(0, str(ROOT / "operator"))
        from kompressor_operator.settings import OperatorSettings
    return OperatorSettings


def _field_exists(model: Any, path: list[str]) -> bool:
    fields = {name.upper(): info for name, info in model.model_fields.items()}
    info = fields.get(path[0])
    if info is None:
        return False
    if len(path) == 1:
        return True
    return hasattr(info.annotation, "model_fields") and _field_exists(info.annotation, path[1:])


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_operator_env_is_what_its_settings_read(values, monkeypatch):
    settings_class = _operator_settings_class()
    env = operator_container(values)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    resolved = {}
    for entry in env:
        name = entry["name"]
        assert name.startswith("KOMPRESSOR_")
        assert _field_exists(settings_class, name.removeprefix("KOMPRESSOR_").split("__")), name
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            resolved[name] = f"secret:{ref['name']}/{ref['key']}"
        else:
            resolved[name] = entry["value"]
    for name in list(os.environ):
        if name.startswith("KOMPRESSOR_"):
            monkeypatch.delenv(name)
    for name, value in resolved.items():
        monkeypatch.setenv(name, value)
    settings = settings_class()
    assert settings.broker.url.get_secret_value() == "secret:kompressor-broker/url"
    assert settings.storage.access_key_id.get_secret_value() == "secret:kompressor-storage/accessKeyId"
    assert settings.max_total_workers == 100
    assert settings.allowed_input_formats == list(WEB_INPUT_FORMATS)
    assert settings.poll_interval_seconds == 3.0
    assert settings.metrics_port == 9090
    assert settings.worker.image == "ghcr.io/kompressor/worker:0.1.0"
    assert settings.worker.image_pull_policy == "IfNotPresent"
    assert settings.worker.broker_secret == "kompressor-broker"
    assert settings.worker.storage_secret == "kompressor-storage"
    assert settings.worker.health_port == 8080
    assert settings.storage_endpoint_allow_networks == []  # no endpoint but the operator's own


def _extra_env_examples(section: str) -> list[str]:
    """The KOMPRESSOR_* variables named in the comment above `<section>.extraEnv` in values.yaml."""
    text = (CHART / "values.yaml").read_text()
    block = text.split(f"\n{section}:\n", 1)[1]
    comment = block.split("\n  extraEnv:", 1)[0].rsplit("\n  # --", 1)[1]
    return re.findall(r"name: (KOMPRESSOR_[A-Z_]+)", comment)


def test_extra_env_examples_name_settings_of_the_process_they_reach():
    """The operator's example once named the broker heartbeat, which only the workers use."""
    from kompressor_worker.settings import WorkerSettings

    for section, model in (("operator", _operator_settings_class()), ("worker", WorkerSettings)):
        examples = _extra_env_examples(section)
        assert examples, section
        for name in examples:
            assert _field_exists(model, name.removeprefix("KOMPRESSOR_").split("__")), (section, name)
    assert "KOMPRESSOR_BROKER__HEARTBEAT_SECONDS" not in _extra_env_examples("operator")


def test_operator_env_follows_the_values():
    values = {
        "storage": {
            "endpointURL": "https://s3.example.com",
            "region": "eu-west-1",
            "credentialsSecret": "",
            "endpointAllowNetworks": ["10.20.0.0/16", "fd00:20::/64"],
        },
        "operator": {"maxTotalWorkers": 1000000, "pollIntervalSeconds": 2.5},
        "worker": {"image": {"repository": "registry.local/worker", "tag": "dev", "pullPolicy": "Always"}},
        "allowedInputFormats": ["jpeg", "heif", "psd"],
    }
    env = {e["name"]: e.get("value") for e in operator_container(values)["env"]}
    assert env["KOMPRESSOR_STORAGE__ENDPOINT_URL"] == "https://s3.example.com"
    assert env["KOMPRESSOR_STORAGE__REGION"] == "eu-west-1"
    assert "KOMPRESSOR_STORAGE__ACCESS_KEY_ID" not in env  # ambient credentials, e.g. IRSA
    assert json.loads(env["KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS"]) == ["10.20.0.0/16", "fd00:20::/64"]
    assert env["KOMPRESSOR_MAX_TOTAL_WORKERS"] == "1000000"
    assert json.loads(env["KOMPRESSOR_ALLOWED_INPUT_FORMATS"]) == ["jpeg", "heif", "psd"]
    assert env["KOMPRESSOR_POLL_INTERVAL_SECONDS"] == "2.5"
    assert env["KOMPRESSOR_WORKER__IMAGE"] == "registry.local/worker:dev"
    assert env["KOMPRESSOR_WORKER__IMAGE_PULL_POLICY"] == "Always"


WORKER_POD_VALUES = {
    "storageSecret": "",
    "logLevel": "DEBUG",
    "logFormat": "text",
    "nodeSelector": {"pool": "batch"},
    "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "priorityClassName": "batch-low",
    "imagePullSecrets": [{"name": "regcred"}],
    "podAnnotations": {"example.com/team": "media"},
    "podLabels": {"team": "media"},
    "serviceAccountName": "kompressor-worker",
    "extraEnv": [{"name": "AWS_CA_BUNDLE", "value": "/etc/ca/ca.crt"}],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
}


def _operator_settings(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The operator's settings as its container's environment gives them (Secrets left unread)."""
    for name in list(os.environ):
        if name.startswith("KOMPRESSOR_"):
            monkeypatch.delenv(name)
    for entry in operator_container(values)["env"]:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
    return _operator_settings_class()()


def test_worker_pod_values_reach_the_operator_and_its_worker_pods(monkeypatch):
    from kompressor.crd import CompressionJobSpec
    from kompressor.messages import JobRef
    from kompressor_operator.builders import worker_deployment

    worker = _operator_settings({"worker": WORKER_POD_VALUES}, monkeypatch).worker
    assert worker.storage_secret == ""
    assert (worker.log_level, worker.log_format) == ("DEBUG", "text")
    assert worker.node_selector == WORKER_POD_VALUES["nodeSelector"]
    assert worker.tolerations == WORKER_POD_VALUES["tolerations"]
    assert worker.affinity == WORKER_POD_VALUES["affinity"]
    assert worker.priority_class_name == "batch-low"
    assert worker.image_pull_secrets == [{"name": "regcred"}]
    assert worker.pod_annotations == WORKER_POD_VALUES["podAnnotations"]
    assert worker.pod_labels == {"team": "media"}
    assert worker.service_account_name == "kompressor-worker"
    assert worker.extra_env == WORKER_POD_VALUES["extraEnv"]
    assert worker.extra_volumes == WORKER_POD_VALUES["extraVolumes"]
    assert worker.extra_volume_mounts == WORKER_POD_VALUES["extraVolumeMounts"]
    spec = CompressionJobSpec.model_validate(
        {"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}}
    )
    pod = worker_deployment(JobRef(namespace="shop", name="j", uid="u"), spec, worker, None, 0)["spec"][
        "template"
    ]["spec"]
    assert pod["serviceAccountName"] == "kompressor-worker" and pod["automountServiceAccountToken"] is True
    assert pod["nodeSelector"] == {"pool": "batch"} and pod["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "AWS_CA_BUNDLE" in env and "KOMPRESSOR_STORAGE__ACCESS_KEY_ID" not in env


def test_unset_worker_pod_values_add_no_variables(monkeypatch):
    names = {e["name"] for e in operator_container()["env"]}
    assert not {"KOMPRESSOR_WORKER__NODE_SELECTOR", "KOMPRESSOR_WORKER__EXTRA_ENV"} & names
    assert _operator_settings({}, monkeypatch).worker.node_selector == {}


def test_the_schema_refuses_exactly_the_variables_the_operator_reserves():
    from kompressor_operator.settings import OPERATOR_ENV

    schema = json.loads((CHART / "values.schema.json").read_text())
    name = schema["properties"]["worker"]["properties"]["extraEnv"]["items"]["properties"]["name"]
    assert name["not"]["pattern"] == "^(" + "|".join(OPERATOR_ENV) + ")$"


# --- every pod is hardened ------------------------------------------------------------------------


def _pod_templates(values: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in render(values)
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_pod_is_hardened_and_bounded(values):
    templates = _pod_templates(values)
    assert templates
    for name, pod in templates:
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert "add" not in sc.get("capabilities", {}), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sc.get("privileged", False) is False, where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where} {bound}"
            assert container.get("livenessProbe"), where
            assert container.get("readinessProbe"), where
            assert not container["image"].endswith(":latest"), where
        if name != "kompressor":  # only the operator talks to the API server
            assert pod.get("automountServiceAccountToken") is False, name


# --- RBAC -----------------------------------------------------------------------------------------

CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
}
PEERING_RULES = {("kopf.dev", "clusterkopfpeerings", v) for v in ("create", "list", "watch", "patch")}
# Exactly the calls the operator makes (kube.py and kopf's list, watch and merge/JSON patches): no
# get/update of jobs, no pods, no Deployment list/watch, no scale subresource. Deployments are
# replaced (update), not patched, when their template changes: a patch would keep what was removed.
NAMESPACED_RULES = {
    ("", "events", "create"),
    ("events.k8s.io", "events", "create"),
    *{("kompressor.dev", "compressionjobs", v) for v in ("list", "watch", "patch", "delete")},
    ("kompressor.dev", "compressionjobs/status", "patch"),
    *{("apps", "deployments", v) for v in ("get", "create", "update", "patch")},
    ("", "secrets", "get"),
}


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    grants = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    grants.add((group, resource, verb))
    return grants


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rbac_has_no_wildcards(values):
    for role in objects(values, "ClusterRole") + objects(values, "Role"):
        for group, resource, verb in _grants(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]


def test_rbac_watching_all_namespaces_is_one_cluster_role_with_exactly_the_operators_rules():
    (cluster_role,) = objects({}, "ClusterRole")
    assert _grants(cluster_role) == CLUSTER_RULES | NAMESPACED_RULES
    assert objects({}, "Role") == []
    (binding,) = objects({}, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kompressor", "namespace": RELEASE_NS}]


def test_rbac_watching_listed_namespaces_grants_them_roles_and_keeps_the_cluster_role_small():
    (cluster_role,) = objects(WATCHING, "ClusterRole")
    assert _grants(cluster_role) == CLUSTER_RULES
    roles = {r["metadata"]["namespace"]: r for r in objects(WATCHING, "Role")}
    assert set(roles) == {"shop", "media"}
    for role in roles.values():
        assert _grants(role) == NAMESPACED_RULES
    bindings = {b["metadata"]["namespace"]: b for b in objects(WATCHING, "RoleBinding")}
    assert set(bindings) == {"shop", "media"}
    for namespace, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kompressor", "namespace": RELEASE_NS}
        ]


def test_service_account_is_the_one_the_operator_runs_as():
    (account,) = objects({}, "ServiceAccount")
    pod = operator_deployment()["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


# --- generated files ------------------------------------------------------------------------------


def test_chart_crd_file_is_what_crd_returns():
    assert yaml.safe_load(gen.CRD_FILE.read_text()) == crd()
    assert yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text()) == crd()


def test_manifests_equal_a_fresh_render():
    diffs = gen.check()
    assert not diffs, "run scripts/render-manifests:\n" + "".join(diffs)


def test_render_is_deterministic():
    assert gen.expected_files() == gen.expected_files()


def test_check_reports_a_drifted_file(tmp_path, monkeypatch):
    manifests = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", manifests)
    crd_file = tmp_path / "crd.yaml"
    shutil.copy(gen.CRD_FILE, crd_file)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "MANIFESTS", manifests)
    monkeypatch.setattr(gen, "CRD_FILE", crd_file)
    assert gen.check() == []
    operator_yaml = manifests / "operator.yaml"
    operator_yaml.write_text(operator_yaml.read_text().replace("replicas: 1", "replicas: 2"))
    (diff,) = gen.check()
    assert "-  replicas: 2" in diff and "+  replicas: 1" in diff
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.check() == []


# --- examples -------------------------------------------------------------------------------------

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_the_three_examples_exist():
    assert {p.name for p in EXAMPLE_FILES} >= {
        "s3-to-webp.yaml",
        "urls-to-jpeg.yaml",
        "small-high-priority.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_validates_against_the_model_and_the_crd_schema(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == API_VERSION
    assert doc["kind"] == KIND
    assert "namespace" not in doc["metadata"], "examples take the namespace from kubectl -n"
    parse_spec(doc["spec"])
    jsonschema = pytest.importorskip("jsonschema")
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(doc, schema)


def test_examples_say_what_the_issue_asked_for():
    webp = parse_spec(yaml.safe_load((EXAMPLES / "s3-to-webp.yaml").read_text())["spec"])
    assert webp.source.s3 is not None and webp.output.format == "webp"
    assert (webp.output.resize.max_width, webp.output.resize.max_height) == (1600, 1600)
    jpeg = parse_spec(yaml.safe_load((EXAMPLES / "urls-to-jpeg.yaml").read_text())["spec"])
    assert jpeg.source.urls is not None and jpeg.source.urls.manifest is not None
    assert jpeg.output.format == "jpeg"
    urgent = parse_spec(yaml.safe_load((EXAMPLES / "small-high-priority.yaml").read_text())["spec"])
    assert urgent.priority == 100 and urgent.workers.max_replicas == 2


def test_the_schemas_input_formats_are_the_contracts():
    """allowedInputFormats takes exactly the formats a job may name (never EPS/PS), web set first."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["allowedInputFormats"]["items"]["enum"] == [f.value for f in InputFormat]
    assert yaml.safe_load((CHART / "values.yaml").read_text())["allowedInputFormats"] == [
        f.value for f in WEB_INPUT_FORMATS
    ]
