"""The worker Deployment: valid apps/v1, credentials only by reference, hardened, drains before kill."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kompressor.crd import WEB_INPUT_FORMATS, CompressionJobSpec, InputFormat, Storage, Workers
from kompressor.messages import JobRef, task_queue
from kompressor_operator.builders import (
    job_ref,
    scale_patch,
    scrape_annotations,
    worker_deployment,
    worker_deployment_name,
    worker_pod_settings,
)
from kompressor_operator.settings import OPERATOR_ENV, WorkerDefaults
from kompressor_worker.settings import WorkerSettings

JOB = JobRef(namespace="shop", name="catalog-2026-11", uid="0f6c2a9e-1111-2222-3333-444455556666")
SPEC = CompressionJobSpec.model_validate(
    {
        "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
        "destination": {"s3": {"bucket": "web", "prefix": "products/"}},
        "storage": {
            "endpointURL": "http://seaweedfs:8333",
            "region": "eu-west-1",
            "credentialsSecret": "s3-creds",
        },
        "limits": {"taskTimeoutSeconds": 90},
        "workers": {
            "processesPerPod": 3,
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": 2, "memory": "2Gi"},
            },
        },
    }
)
DEFAULTS = WorkerDefaults(image="registry.example/kompressor-worker:1.2.3", image_pull_policy="Always")
OWNER = {
    "apiVersion": "kompressor.dev/v1alpha1",
    "kind": "CompressionJob",
    "metadata": {"name": JOB.name, "namespace": JOB.namespace, "uid": JOB.uid},
    "spec": {},
}
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def build(
    spec: CompressionJobSpec = SPEC,
    job: JobRef = JOB,
    owner=OWNER,
    replicas: int | None = 3,
    defaults: WorkerDefaults = DEFAULTS,
) -> dict:
    return worker_deployment(job, spec, defaults, owner, replicas)


def container(deployment: dict) -> dict:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container(deployment)["env"]}


def test_it_is_an_apps_v1_deployment_whose_selector_matches_its_pods():
    d = build()
    assert (d["apiVersion"], d["kind"]) == ("apps/v1", "Deployment")
    assert d["metadata"] == {
        "name": "catalog-2026-11-workers",
        "namespace": "shop",
        "labels": d["spec"]["template"]["metadata"]["labels"],
        "ownerReferences": d["metadata"]["ownerReferences"],
    }
    selector = d["spec"]["selector"]["matchLabels"]
    template = d["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template.items()
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["revisionHistoryLimit"] == 2


def test_labels_are_the_recommended_set():
    labels = build()["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "kompressor-worker",
        "app.kubernetes.io/instance": "catalog-2026-11",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "kompressor",
        "app.kubernetes.io/managed-by": "kompressor-operator",
        "kompressor.dev/job": "catalog-2026-11",
    }


def test_the_owner_reference_makes_the_job_the_controller():
    assert build()["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kompressor.dev/v1alpha1",
            "kind": "CompressionJob",
            "name": JOB.name,
            "uid": JOB.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    flat = {"apiVersion": "kompressor.dev/v1alpha1", "kind": "CompressionJob", "name": "x", "uid": "u"}
    assert build(owner=flat)["metadata"]["ownerReferences"][0]["uid"] == "u"
    assert "ownerReferences" not in build(owner=None)["metadata"]


def test_the_container_runs_the_worker_image_with_its_settings():
    c = container(build())
    assert (c["name"], c["image"], c["imagePullPolicy"]) == ("worker", DEFAULTS.image, "Always")
    assert "args" not in c and "command" not in c  # the image's ENTRYPOINT is kompressor-worker
    values = {name: item.get("value") for name, item in env(build()).items()}
    assert values["KOMPRESSOR_QUEUE"] == task_queue(JOB)
    assert (values["KOMPRESSOR_JOB_NAMESPACE"], values["KOMPRESSOR_JOB_NAME"]) == (JOB.namespace, JOB.name)
    assert values["KOMPRESSOR_PROCESSES"] == "3"
    assert values["KOMPRESSOR_HEALTH_PORT"] == "8080"
    assert values["KOMPRESSOR_STORAGE__ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert values["KOMPRESSOR_STORAGE__REGION"] == "eu-west-1"
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert all(isinstance(item.get("value", ""), str) for item in c["env"])


def test_credentials_come_only_from_secret_key_refs():
    refs = {
        name: item["valueFrom"]["secretKeyRef"] for name, item in env(build()).items() if "valueFrom" in item
    }
    assert refs == {
        "KOMPRESSOR_BROKER__URL": {"name": "kompressor-broker", "key": "url"},
        "KOMPRESSOR_STORAGE__ACCESS_KEY_ID": {"name": "s3-creds", "key": "accessKeyId"},
        "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY": {"name": "s3-creds", "key": "secretAccessKey"},
    }
    default = SPEC.model_copy(
        update={"storage": SPEC.storage.model_copy(update={"credentials_secret": None})}
    )
    assert env(build(default))["KOMPRESSOR_STORAGE__ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == (
        "kompressor-storage"
    )
    for item in container(build())["env"]:
        assert ("value" in item) != ("valueFrom" in item)
        value = item.get("value", "").lower()
        assert not any(word in value for word in ("secret", "password", "passwd", "token", "amqp://", "@"))


def test_pods_are_hardened():
    pod = build()["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = container(build())["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    [tmp] = pod["volumes"]
    assert tmp["emptyDir"]["sizeLimit"]
    assert container(build())["volumeMounts"] == [{"name": tmp["name"], "mountPath": "/tmp"}]


def test_workers_drain_before_they_are_killed():
    d = build()
    grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = int(env(d)["KOMPRESSOR_GRACE_SECONDS"]["value"])
    assert SPEC.limits.task_timeout_seconds < drain < grace == 120
    assert d["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_pods_carry_the_prometheus_scrape_annotations_for_the_health_port():
    template = build()["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    (port,) = template["spec"]["containers"][0]["ports"]
    assert int(annotations["prometheus.io/port"]) == port["containerPort"] == DEFAULTS.health_port


def test_probes_use_the_named_health_port():
    c = container(build())
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_a_253_character_job_name_gives_valid_names_and_labels():
    long = JobRef(namespace="shop", name="a" * 200 + "." + "b" * 52, uid=JOB.uid)
    assert len(long.name) == 253
    d = build(job=long)
    name = d["metadata"]["name"]
    assert len(name) <= 63 and DNS_LABEL.match(name) and name.endswith("-workers")
    for value in d["metadata"]["labels"].values():
        assert len(value) <= 63 and LABEL_VALUE.match(value)
    other = JobRef(namespace="shop", name="a" * 200 + "." + "c" * 52, uid=JOB.uid)
    assert worker_deployment_name(other.name) != name  # the hash keeps long names apart


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True))
def test_any_job_name_gives_a_valid_deployment(name):
    d = build(job=JobRef(namespace="ns", name=name, uid="u"))
    assert len(d["metadata"]["name"]) <= 63
    assert DNS_LABEL.match(d["metadata"]["name"])
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values())
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_an_external_scaler_gets_a_deployment_without_replicas():
    """Without spec.replicas the operator's create and template patches never set them."""
    d = build(replicas=None)
    assert "replicas" not in d["spec"]
    assert d["spec"]["template"] == build()["spec"]["template"]


def test_scale_patch_and_negative_replicas():
    assert scale_patch(4) == {"spec": {"replicas": 4}}
    with pytest.raises(ValueError, match="replicas"):
        scale_patch(-1)
    with pytest.raises(ValueError, match="replicas"):
        build(replicas=-1)


def test_job_ref_reads_metadata_and_names_what_is_missing():
    assert job_ref({"namespace": "shop", "name": "x", "uid": "u-1", "labels": {}}) == JobRef(
        namespace="shop", name="x", uid="u-1"
    )
    with pytest.raises(ValueError, match="uid"):
        job_ref({"namespace": "shop", "name": "x"})


def test_workers_get_the_installations_allowed_input_formats():
    """The maximum goes to every worker, which refuses inputs beyond it as the operator refuses jobs."""
    default = json.loads(env(build())["KOMPRESSOR_ALLOWED_INPUT_FORMATS"]["value"])
    assert default == [f.value for f in WEB_INPUT_FORMATS]
    wider = worker_deployment(JOB, SPEC, DEFAULTS, OWNER, 1, [InputFormat.heif, InputFormat.jpeg])
    assert json.loads(env(wider)["KOMPRESSOR_ALLOWED_INPUT_FORMATS"]["value"]) == ["jpeg", "heif"]
    worker = WorkerSettings.model_validate({"queue": "q", "allowed_input_formats": ["jpeg", "heif"]})
    assert worker.allowed_input_formats == [InputFormat.jpeg, InputFormat.heif]


# --- pod settings: the chart's worker.* defaults and a job's overrides ------------------------------

SPOT = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}
GPU = {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60}
ZONE_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}
        ]
    }
}
SPREAD = {
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {
            "weight": 100,
            "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kompressor-worker"}},
            },
        }
    ]
}
PLATFORM = WorkerDefaults(
    image="registry.internal/kompressor-worker:1.2.3",
    storage_secret="",
    node_selector={"kubernetes.io/os": "linux", "pool": "batch"},
    tolerations=[SPOT],
    affinity={"podAntiAffinity": SPREAD},
    priority_class_name="batch-low",
    image_pull_secrets=[{"name": "regcred"}],
    pod_annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"},
    pod_labels={"team": "media", "app.kubernetes.io/name": "hijack", "kompressor.dev/job": "other"},
    service_account_name="kompressor-worker",
    extra_env=[
        {"name": "AWS_CA_BUNDLE", "value": "/etc/ca/ca.crt"},
        {"name": "KOMPRESSOR_PREFETCH", "value": "4"},
    ],
    extra_volumes=[{"name": "ca", "configMap": {"name": "corporate-ca"}}],
    extra_volume_mounts=[{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
    log_level="DEBUG",
    log_format="text",
)


def workers(**overrides) -> Workers:
    return Workers.model_validate(overrides)


def test_without_pod_settings_the_pod_spec_has_none_of_them():
    assert worker_pod_settings(Workers(), WorkerDefaults()) == {}
    pod = build()["spec"]["template"]["spec"]
    for field in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert field not in pod
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False


def test_the_chart_defaults_reach_every_job():
    assert worker_pod_settings(Workers(), PLATFORM) == {
        "nodeSelector": {"kubernetes.io/os": "linux", "pool": "batch"},
        "tolerations": [SPOT],
        "affinity": {"podAntiAffinity": SPREAD},
        "priorityClassName": "batch-low",
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccountName": "kompressor-worker",
    }


def test_a_job_overrides_placement_and_priority():
    job = workers(
        nodeSelector={"pool": "spot-arm", "kubernetes.io/arch": "arm64"},
        tolerations=[GPU],
        affinity={"nodeAffinity": ZONE_AFFINITY},
        priorityClassName="urgent",
    )
    pod = worker_pod_settings(job, PLATFORM)
    # A map merges key by key, the job's value winning.
    assert pod["nodeSelector"] == {
        "kubernetes.io/os": "linux",
        "pool": "spot-arm",
        "kubernetes.io/arch": "arm64",
    }
    # A list replaces: the chart's spot toleration is gone.
    assert pod["tolerations"] == [GPU]
    # Affinity merges per kind: the job's nodeAffinity joins the chart's podAntiAffinity.
    assert pod["affinity"] == {"podAntiAffinity": SPREAD, "nodeAffinity": ZONE_AFFINITY}
    assert pod["priorityClassName"] == "urgent"


def test_a_job_drops_the_default_tolerations_with_an_empty_list():
    assert "tolerations" not in worker_pod_settings(workers(tolerations=[]), PLATFORM)
    assert worker_pod_settings(workers(), PLATFORM)["tolerations"] == [SPOT]  # unset: the default


def test_a_job_replaces_one_affinity_kind_whole():
    mine = {"requiredDuringSchedulingIgnoredDuringExecution": []}
    pod = worker_pod_settings(workers(affinity={"podAntiAffinity": mine}), PLATFORM)
    assert pod["affinity"] == {"podAntiAffinity": mine}


def test_the_result_shares_nothing_with_the_defaults():
    pod = worker_pod_settings(Workers(), PLATFORM)
    pod["tolerations"][0]["key"] = "changed"
    pod["affinity"]["podAntiAffinity"]["x"] = 1
    pod["nodeSelector"]["x"] = "y"
    assert PLATFORM.tolerations == [SPOT] and "x" not in PLATFORM.affinity["podAntiAffinity"]
    assert "x" not in PLATFORM.node_selector


labels_ = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["1", "2", "3"]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(default=labels_, job=st.none() | labels_)
def test_node_selectors_merge_with_the_job_winning(default, job):
    merged = worker_pod_settings(workers(nodeSelector=job), WorkerDefaults(node_selector=default))
    got = merged.get("nodeSelector", {})
    assert set(got) == set(default) | set(job or {})
    for key, value in got.items():
        assert value == (job or {}).get(key, default.get(key))


def test_the_deployment_carries_the_platform_settings():
    d = build(defaults=PLATFORM)
    template = d["spec"]["template"]
    pod = template["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "batch-low"
    assert template["metadata"]["annotations"] == {
        **scrape_annotations(PLATFORM.health_port),
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
    }
    labels = template["metadata"]["labels"]
    assert labels["team"] == "media"
    # podLabels never change the labels the selector matches.
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "kompressor-worker"
    assert labels["kompressor.dev/job"] == JOB.name
    assert "team" not in d["spec"]["selector"]["matchLabels"] and "team" not in d["metadata"]["labels"]
    c = container(d)
    assert c["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "ca", "mountPath": "/etc/ca", "readOnly": True},
    ]
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "ca"]
    values = {name: item.get("value") for name, item in env(d).items()}
    assert values["AWS_CA_BUNDLE"] == "/etc/ca/ca.crt" and values["KOMPRESSOR_PREFETCH"] == "4"
    assert (values["KOMPRESSOR_LOG_LEVEL"], values["KOMPRESSOR_LOG_FORMAT"]) == ("DEBUG", "text")
    assert len(c["env"]) == len(env(d)), "two variables with one name"


def test_a_named_service_account_is_the_only_case_its_token_is_mounted():
    pod = build(defaults=PLATFORM)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kompressor-worker"
    assert pod["automountServiceAccountToken"] is True
    anonymous = PLATFORM.model_copy(update={"service_account_name": ""})
    pod = build(defaults=anonymous)["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False


def test_without_any_storage_secret_the_worker_uses_the_sdks_credential_chain():
    """No job Secret and no chart default: no key variables, so boto3 finds IRSA's or workload
    identity's credentials itself (a Secret reference would keep the pod from starting)."""
    no_secret = SPEC.model_copy(
        update={"storage": SPEC.storage.model_copy(update={"credentials_secret": None})}
    )
    names = set(env(build(no_secret, defaults=PLATFORM)))
    assert not {"KOMPRESSOR_STORAGE__ACCESS_KEY_ID", "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY"} & names
    assert "KOMPRESSOR_STORAGE__REGION" in names
    # A job that names its Secret still gets it, whatever the chart says.
    refs = {
        n: e["valueFrom"]["secretKeyRef"]["name"]
        for n, e in env(build(defaults=PLATFORM)).items()
        if "valueFrom" in e
    }
    assert refs["KOMPRESSOR_STORAGE__ACCESS_KEY_ID"] == "s3-creds"


def test_every_variable_the_operator_sets_is_reserved_from_extra_env():
    for item in build()["spec"]["template"]["spec"]["containers"][0]["env"]:
        assert item["name"] in OPERATOR_ENV, item["name"]
    assert WorkerDefaults(extra_env=[{"name": "KOMPRESSOR_STORAGE__MAX_ATTEMPTS", "value": "8"}]).extra_env


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("extra_env", [{"name": "KOMPRESSOR_QUEUE", "value": "x"}], "KOMPRESSOR_QUEUE"),
        ("extra_env", [{"name": "KOMPRESSOR_STORAGE__REGION", "value": "x"}], "KOMPRESSOR_STORAGE__REGION"),
        ("extra_volumes", [{"name": "tmp", "emptyDir": {}}], "'tmp'"),
    ],
)
def test_defaults_refuse_what_would_clash_with_the_operators_own(field, value, words):
    with pytest.raises(ValidationError, match=words):
        WorkerDefaults(**{field: value})


def test_workers_reach_the_storage_the_operator_lists_from():
    """A job naming no endpoint or region: its pods get the operator's defaults (they went to AWS S3)."""
    from kompressor.settings import StorageSettings
    from kompressor_operator.controller import Controller
    from kompressor_operator.settings import OperatorSettings

    storage = StorageSettings(endpoint_url="http://127.0.0.1:8333", region="eu-west-3")
    controller = Controller(OperatorSettings(storage=storage, worker=DEFAULTS), kube=None, metrics=None)
    plain = SPEC.model_copy(update={"storage": Storage()})
    env = _env(controller._deployment(JOB, plain, OWNER, 0))
    assert (env["KOMPRESSOR_STORAGE__ENDPOINT_URL"], env["KOMPRESSOR_STORAGE__REGION"]) == (
        "http://127.0.0.1:8333",
        "eu-west-3",
    )
    own = plain.model_copy(
        update={"storage": Storage(endpoint_url="http://127.0.0.1:9000", region="us-west-2")}
    )
    env = _env(controller._deployment(JOB, own, OWNER, 0))
    assert (env["KOMPRESSOR_STORAGE__ENDPOINT_URL"], env["KOMPRESSOR_STORAGE__REGION"]) == (
        "http://127.0.0.1:9000",
        "us-west-2",
    )


def test_a_jobs_own_endpoint_reaches_its_workers_with_the_networks_each_connection_is_judged_against():
    """As the operator's client for such a job (endpoints.endpoint_guard), the workers' judge every
    connection to the job's endpoint; the operator's own endpoint is the admin's, and not judged."""
    from kompressor.settings import StorageSettings
    from kompressor_operator.controller import Controller
    from kompressor_operator.settings import OperatorSettings

    settings = OperatorSettings(
        storage=StorageSettings(endpoint_url="http://seaweedfs.kompressor:8333"),
        worker=DEFAULTS,
        storage_endpoint_allow_networks=["10.20.0.0/16", "192.168.7.0/24"],
    )
    controller = Controller(settings, kube=None, metrics=None)
    allow = "KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS"
    for storage in (Storage(), Storage(endpoint_url="http://seaweedfs.kompressor:8333/")):
        plain = SPEC.model_copy(update={"storage": storage})
        assert allow not in _env(controller._deployment(JOB, plain, OWNER, 0))
    own = SPEC.model_copy(
        update={"storage": Storage(endpoint_url="http://minio.team-a:9000", credentials_secret="team-a-s3")}
    )
    assert json.loads(_env(controller._deployment(JOB, own, OWNER, 0))[allow] or "") == [
        "10.20.0.0/16",
        "192.168.7.0/24",
    ]


def _env(deployment: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_a_job_sets_its_workers_log_level_over_the_charts():
    def level(spec: CompressionJobSpec) -> str:
        return env(build(spec, defaults=PLATFORM))["KOMPRESSOR_LOG_LEVEL"]["value"]

    assert level(SPEC) == "DEBUG"  # the chart's worker.logLevel
    loud = SPEC.model_copy(update={"workers": SPEC.workers.model_copy(update={"log_level": "WARNING"})})
    assert level(loud) == "WARNING"
