"""Every object the chart renders is accepted by the real API server (server-side apply)."""

from __future__ import annotations

import json

import pytest
import yaml

from testbed import KubeAPI
from tests.e2e.cluster import ROOT, render_manifests_module

pytestmark = pytest.mark.kube


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": ["team-a", "team-b"]},
        {"dev": {"enabled": True}, "grafana": {"dashboard": {"enabled": True}}},
        {
            "watchNamespaces": ["team-a", "team-b"],
            "networkPolicy": {
                "enabled": True,
                "apiServer": {"to": [{"ipBlock": {"cidr": "192.0.2.1/32"}}], "ports": [{"port": 6443}]},
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            },
        },
    ],
    ids=["defaults", "watch-namespaces", "dev-and-dashboard", "network-policies"],
)
def test_rendered_objects_apply_server_side(kube: KubeAPI, values: dict):
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "crd.yaml"))
    for namespace in ("kompressor", "team-a", "team-b"):
        kube.kubectl("create", "namespace", namespace, check=False)
    objects = render_manifests_module().render_chart(values, namespace="kompressor")
    assert objects, "the chart rendered nothing"
    for obj in objects:
        if _namespaced(obj):  # `helm install -n kompressor` puts un-namespaced objects there
            obj["metadata"].setdefault("namespace", "kompressor")
    documents = "\n---\n".join(yaml.safe_dump(o) for o in objects)
    result = kube.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=documents)
    applied = [line for line in result.stdout.splitlines() if "serverside-applied" in line]
    assert len(applied) == len(objects), result.stdout


def _namespaced(obj: dict) -> bool:
    return obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition")


def test_the_plain_manifests_apply_server_side(kube: KubeAPI):
    kube.kubectl("create", "namespace", "kompressor", check=False)
    for name in ("crd.yaml", "rbac.yaml", "operator.yaml"):
        result = kube.kubectl(
            "apply", "--server-side", "--dry-run=server", "-f", str(ROOT / "manifests" / name)
        )
        assert "serverside-applied" in result.stdout, (name, result.stdout)


def test_a_worker_deployment_with_every_pod_setting_is_accepted(kube: KubeAPI):
    """The chart's worker.* defaults and a job's overrides make a Deployment the API server takes."""
    from kompressor.crd import CompressionJobSpec
    from kompressor.messages import JobRef
    from kompressor_operator.builders import worker_deployment
    from kompressor_operator.settings import WorkerDefaults

    kube.kubectl("create", "namespace", "team-a", check=False)
    defaults = WorkerDefaults(
        storage_secret="",
        node_selector={"kubernetes.io/os": "linux"},
        tolerations=[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={
            "podAntiAffinity": {
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
        },
        priority_class_name="batch-low",
        image_pull_secrets=[{"name": "regcred"}],
        pod_annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"},
        pod_labels={"team": "a"},
        service_account_name="kompressor-worker",
        extra_env=[{"name": "AWS_CA_BUNDLE", "value": "/etc/ca/ca.crt"}],
        extra_volumes=[{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        extra_volume_mounts=[{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
    )
    spec = CompressionJobSpec.model_validate(
        {
            "source": {"s3": {"bucket": "raw"}},
            "destination": {"s3": {"bucket": "web"}},
            "workers": {
                "nodeSelector": {"pool": "spot"},
                "tolerations": [
                    {
                        "key": "gpu",
                        "operator": "Equal",
                        "value": "t",
                        "effect": "NoExecute",
                        "tolerationSeconds": 30,
                    }
                ],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                            ]
                        }
                    }
                },
                "priorityClassName": "urgent",
            },
        }
    )
    deployment = worker_deployment(
        JobRef(namespace="team-a", name="catalog", uid="u-1"), spec, defaults, None, 2
    )
    result = kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(deployment)
    )
    accepted = json.loads(result.stdout)["spec"]["template"]
    pod = accepted["spec"]
    # The server kept every setting (nothing pruned or refused).
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "spot"}
    assert [t["key"] for t in pod["tolerations"]] == ["gpu"]
    assert set(pod["affinity"]) == {"nodeAffinity", "podAntiAffinity"}
    assert pod["priorityClassName"] == "urgent"
    assert pod["serviceAccountName"] == "kompressor-worker" and pod["automountServiceAccountToken"] is True
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert accepted["metadata"]["labels"]["team"] == "a"
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "ca"]


def test_a_job_with_pod_overrides_is_stored_whole(kube: KubeAPI):
    """The CRD's schema keeps a job's affinity as written (not pruned) and refuses a bad toleration."""
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "crd.yaml"))
    kube.kubectl("create", "namespace", "team-a", check=False)
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    job = {
        "apiVersion": "kompressor.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "placed", "namespace": "team-a"},
        "spec": {
            "source": {"s3": {"bucket": "raw"}},
            "destination": {"s3": {"bucket": "web"}},
            "workers": {
                "nodeSelector": {"pool": "spot"},
                "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": affinity,
                "priorityClassName": "urgent",
            },
        },
    }
    result = kube.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(job))
    assert json.loads(result.stdout)["spec"]["workers"]["affinity"] == affinity
    job["spec"]["workers"]["tolerations"] = [{"key": "spot", "effect": "Sometimes"}]
    refused = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(job), check=False)
    assert refused.returncode != 0 and "effect" in refused.stderr


def test_reapplying_a_worker_deployment_drops_what_the_new_one_lacks(kube: KubeAPI):
    """A job that drops a nodeSelector key, or a chart that drops an extra volume or the storage
    Secret, must not leave them in the running Deployment; its replicas stay as scaled."""
    import kubernetes

    from kompressor.crd import CompressionJobSpec
    from kompressor.messages import JobRef
    from kompressor_operator.builders import worker_deployment
    from kompressor_operator.kube import Kube
    from kompressor_operator.settings import WorkerDefaults

    kube.kubectl("create", "namespace", "team-b", check=False)
    kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig_path))
    adapter = Kube()
    # A real object stands for the job: a missing owner would get the Deployment collected.
    made = kubernetes.client.CoreV1Api().create_namespaced_config_map(
        "team-b", {"metadata": {"name": "reapplied-owner"}}
    )
    owner = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "reapplied-owner", "uid": made.metadata.uid},
    }
    job = JobRef(namespace="team-b", name="reapplied", uid=made.metadata.uid)
    base = {"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}}
    placed = CompressionJobSpec.model_validate(
        {**base, "storage": {"credentialsSecret": "s3-creds"}, "workers": {"nodeSelector": {"pool": "spot"}}}
    )
    chart = WorkerDefaults(
        extra_volumes=[{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        extra_volume_mounts=[{"name": "ca", "mountPath": "/etc/ca"}],
    )
    adapter.apply_deployment(worker_deployment(job, placed, chart, owner, 0))
    adapter.scale(job.namespace, "reapplied-workers", 3, job.uid)
    adapter.apply_deployment(
        worker_deployment(
            job, CompressionJobSpec.model_validate(base), WorkerDefaults(storage_secret=""), owner, 0
        )
    )
    stored = json.loads(
        kube.kubectl("get", "deployment", "-n", "team-b", "reapplied-workers", "-o", "json").stdout
    )
    pod = stored["spec"]["template"]["spec"]
    assert stored["spec"]["replicas"] == 3
    assert "nodeSelector" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "KOMPRESSOR_STORAGE__ACCESS_KEY_ID" not in env
