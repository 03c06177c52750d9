"""The operator's Kubernetes adapter on the real API server: it changes only Deployments its job owns."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kompressor.messages import JobRef
from kompressor_operator.builders import worker_deployment
from kompressor_operator.kube import DeploymentNotOwned, Kube
from kompressor_operator.settings import WorkerDefaults
from testbed import KubeAPI
from tests.jobs import job_spec

pytestmark = pytest.mark.kube


@pytest.fixture
def api(kube: KubeAPI) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kube.kubeconfig_path))
    yield api
    api.close()


@pytest.fixture
def namespace(kube: KubeAPI) -> str:
    name = f"own-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    return name


def _owner(api: client.ApiClient, namespace: str) -> dict:
    """A real object to stand for the job (a missing owner would get its dependents collected)."""
    made = client.CoreV1Api(api).create_namespaced_config_map(
        namespace, {"metadata": {"name": f"job-{uuid.uuid4().hex[:6]}"}}
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": made.metadata.name, "uid": made.metadata.uid},
    }


def _deployment(namespace: str, owner: dict | None, image: str = "worker:1") -> dict:
    job = JobRef(
        namespace=namespace, name="shop", uid=(owner or {"metadata": {"uid": "x"}})["metadata"]["uid"]
    )
    deployment = worker_deployment(job, job_spec("b-1"), WorkerDefaults(image=image), owner=owner, replicas=0)
    return deployment


def test_a_deployment_the_job_does_not_own_is_neither_patched_nor_scaled(api, namespace):
    apps = client.AppsV1Api(api)
    foreign = _deployment(namespace, owner=None, image="someone-elses:1")
    foreign["spec"]["replicas"] = 2
    apps.create_namespaced_deployment(namespace, foreign)
    owner = _owner(api, namespace)
    kube = Kube(api)

    with pytest.raises(DeploymentNotOwned, match="is not this job's"):
        kube.apply_deployment(_deployment(namespace, owner))
    with pytest.raises(DeploymentNotOwned, match="owned by nothing"):
        kube.scale(namespace, "shop-workers", 0, owner["metadata"]["uid"])

    left = apps.read_namespaced_deployment("shop-workers", namespace)
    assert left.spec.replicas == 2
    assert left.spec.template.spec.containers[0].image == "someone-elses:1"
    assert not left.metadata.owner_references


def test_another_jobs_deployment_is_not_taken_either(api, namespace):
    apps = client.AppsV1Api(api)
    earlier, later = _owner(api, namespace), _owner(api, namespace)
    apps.create_namespaced_deployment(namespace, _deployment(namespace, earlier))
    with pytest.raises(DeploymentNotOwned, match=earlier["metadata"]["uid"]):
        Kube(api).scale(namespace, "shop-workers", 3, later["metadata"]["uid"])
    assert apps.read_namespaced_deployment("shop-workers", namespace).spec.replicas == 0


def test_the_jobs_own_deployment_is_updated_and_scaled(api, namespace):
    apps = client.AppsV1Api(api)
    owner = _owner(api, namespace)
    kube = Kube(api)
    kube.apply_deployment(_deployment(namespace, owner, image="worker:1"))
    kube.scale(namespace, "shop-workers", 3, owner["metadata"]["uid"])
    kube.apply_deployment(_deployment(namespace, owner, image="worker:2"))  # a 409, then the patch
    got = apps.read_namespaced_deployment("shop-workers", namespace)
    assert (got.spec.replicas, got.spec.template.spec.containers[0].image) == (3, "worker:2")


def test_a_change_carrying_another_uid_is_refused_by_the_api_server(api, namespace):
    """What makes the check and the change one step: a Deployment deleted and made again between
    them has another uid, and the API server refuses a patch that names the old one."""
    apps = client.AppsV1Api(api)
    owner = _owner(api, namespace)
    made = apps.create_namespaced_deployment(namespace, _deployment(namespace, owner))
    stale = {"metadata": {"uid": str(uuid.uuid4())}, "spec": {"replicas": 4}}
    with pytest.raises(ApiException) as refused:
        apps.patch_namespaced_deployment("shop-workers", namespace, stale)
    assert refused.value.status in (409, 422)
    got = apps.read_namespaced_deployment("shop-workers", namespace)
    assert (got.metadata.uid, got.spec.replicas) == (made.metadata.uid, 0)
