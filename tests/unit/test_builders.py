"""The worker Deployment: valid apps/v1, credentials only by reference, hardened, drains before kill."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kompressor.crd import CompressionJobSpec, Storage
from kompressor.messages import JobRef, task_queue
from kompressor_operator.builders import (
    job_ref,
    scale_patch,
    worker_deployment,
    worker_deployment_name,
)
from kompressor_operator.settings import WorkerDefaults

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


def build(spec: CompressionJobSpec = SPEC, job: JobRef = JOB, owner=OWNER, replicas: int | None = 3) -> dict:
    return worker_deployment(job, spec, DEFAULTS, owner, replicas)


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


def test_no_endpoint_variable_when_the_spec_names_none():
    aws = SPEC.model_copy(update={"storage": SPEC.storage.model_copy(update={"endpoint_url": None})})
    assert "KOMPRESSOR_STORAGE__ENDPOINT_URL" not in env(build(aws))


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


def test_workers_reach_the_storage_the_operator_lists_from():
    """A job naming no endpoint or region: its pods get the operator's defaults (they went to AWS S3)."""
    from kompressor.settings import StorageSettings
    from kompressor_operator.controller import Controller
    from kompressor_operator.settings import OperatorSettings

    storage = StorageSettings(endpoint_url="http://127.0.0.1:8333", region="eu-west-3")
    controller = Controller(OperatorSettings(storage=storage, worker=DEFAULTS), kube=None, metrics=None)
    plain = SPEC.model_copy(update={"storage": Storage()})
    env = _env(controller._worker_deployment(JOB, plain, OWNER, 0))
    assert (env["KOMPRESSOR_STORAGE__ENDPOINT_URL"], env["KOMPRESSOR_STORAGE__REGION"]) == (
        "http://127.0.0.1:8333",
        "eu-west-3",
    )
    own = plain.model_copy(
        update={"storage": Storage(endpoint_url="http://127.0.0.1:9000", region="us-west-2")}
    )
    env = _env(controller._worker_deployment(JOB, own, OWNER, 0))
    assert (env["KOMPRESSOR_STORAGE__ENDPOINT_URL"], env["KOMPRESSOR_STORAGE__REGION"]) == (
        "http://127.0.0.1:9000",
        "us-west-2",
    )


def _env(deployment: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
