"""Kubernetes adapter of the operator: the worker Deployment, its scale, Secrets, job deletion.

Blocking client calls, made from worker threads (asyncio.to_thread) by the handlers. Nothing here
decides anything: builders.py says what a Deployment is, policy.py how many replicas it gets.

A job only ever changes a Deployment it owns: one whose owner references name the job's uid. A
Deployment of the worker name owned by anything else (or nothing) is left alone and
`DeploymentNotOwned` raised. The change then carries the uid of the Deployment that was checked, so
a Deployment deleted and made again in between is refused by the API server (uid is immutable).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from kompressor.crd import GROUP, PLURAL, VERSION
from kompressor_operator.builders import scale_patch


def load_config() -> None:
    """The in-cluster service account's config, else the local kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class SecretMissing(LookupError):
    """A Secret the job names (or a key in it) does not exist yet: the job waits for it."""


class DeploymentNotOwned(Exception):
    """A Deployment has the job's worker name but is not the job's: the operator will not touch it."""


class Refused(ValueError):
    """The API server refused an object as invalid (422); the message names the field and the rule.
    A job's pod settings can get here: the CRD keeps affinity terms as written, unchecked."""


def _refusal(exc: ApiException) -> Refused:
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except ValueError:
        message = ""
    return Refused(message or str(exc.reason))


REPLACE_ATTEMPTS = 5


class Kube:
    """The operator's Kubernetes calls: the worker Deployment (apply, scale, read its replicas), a
    Secret's value, and deleting a job past its TTL. It applies what the controller decided."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        """`api_client`: the loaded configuration's (load_config) when None."""
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    def apply_deployment(self, deployment: dict[str, Any]) -> None:
        """Create the Deployment, or replace the job's own with this one, keeping its current
        replicas; DeploymentNotOwned when the existing one is not owned by the job of `deployment`.

        A replace, not a patch: a strategic merge patch keeps whatever the new template no longer
        has (a nodeSelector key a job dropped, a removed extra volume, the key variables of a storage
        Secret no longer named). The replace carries the checked object's uid and resourceVersion, so
        one changed in between is read and checked again, and one made again is refused.
        An invalid Deployment raises Refused."""
        metadata = deployment["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        try:
            self.apps.create_namespaced_deployment(namespace, deployment)
            return
        except ApiException as exc:
            if exc.status == 422:
                raise _refusal(exc) from None
            if exc.status != 409:
                raise
        owners = [reference["uid"] for reference in metadata.get("ownerReferences", [])]
        for attempt in range(REPLACE_ATTEMPTS):
            current = self._owned(namespace, name, owners)
            body = {
                **deployment,
                "metadata": {
                    **metadata,
                    "uid": current.metadata.uid,
                    "resourceVersion": current.metadata.resource_version,
                },
                "spec": {**deployment["spec"], "replicas": current.spec.replicas},
            }
            try:
                self.apps.replace_namespaced_deployment(name, namespace, body)
                return
            except ApiException as exc:
                if exc.status == 422:
                    raise _refusal(exc) from None
                # 409: written in between (the Deployment controller updates its status all the
                # time): read it again, owner check included.
                if exc.status != 409 or attempt == REPLACE_ATTEMPTS - 1:
                    raise

    def scale(self, namespace: str, name: str, replicas: int, owner_uid: str) -> None:
        """Set the replicas of the Deployment owned by `owner_uid`; DeploymentNotOwned otherwise."""
        uid = self._owned(namespace, name, [owner_uid]).metadata.uid
        # The uid makes the patch a precondition: it fails if the Deployment was replaced meanwhile.
        self.apps.patch_namespaced_deployment(
            name, namespace, {"metadata": {"uid": uid}, **scale_patch(replicas)}
        )

    def _owned(self, namespace: str, name: str, owner_uids: list[str]) -> Any:
        """Deployment `name` (a V1Deployment), which one of `owner_uids` owns; else DeploymentNotOwned."""
        existing = self.apps.read_namespaced_deployment(name, namespace)
        found = [reference.uid for reference in existing.metadata.owner_references or []]
        if not set(found) & set(owner_uids):
            owned = f"owned by {', '.join(found)}" if found else "owned by nothing"
            raise DeploymentNotOwned(
                f"Deployment {namespace}/{name} already exists and is not this job's ({owned}); the "
                "operator leaves it alone: delete or rename it, or give the job another name"
            )
        return existing

    def desired_replicas(self, namespace: str, name: str) -> int:
        """The Deployment's spec.replicas: what an external scaler last asked for (0 if it is gone)."""
        try:
            return self.apps.read_namespaced_deployment(name, namespace).spec.replicas or 0
        except ApiException as exc:
            if exc.status == 404:
                return 0
            raise

    def ready_replicas(self, namespace: str, name: str) -> int:
        try:
            deployment = self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return 0
            raise
        return deployment.status.ready_replicas or 0

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SecretMissing(f"Secret {namespace}/{name} does not exist") from None
            raise
        data = secret.data or {}
        if key not in data:
            raise SecretMissing(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    def ensure_peering(self, name: str) -> None:
        """The ClusterKopfPeering object operators of one release elect their leader in. kopf only
        patches it: without it no operator would see another, and every replica would lead."""
        body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        try:
            self.custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
