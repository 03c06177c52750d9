"""Kubernetes adapter of the operator: the worker Deployment, its scale, Secrets, job deletion.

Blocking client calls, made from worker threads (asyncio.to_thread) by the handlers. Nothing here
decides anything: builders.py says what a Deployment is, policy.py how many replicas it gets.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from kompressor.crd import GROUP, PLURAL, VERSION


def load_config() -> None:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class SecretMissing(LookupError):
    pass


class Refused(ValueError):
    """The API server refused an object as invalid (422); the message names the field and the rule.
    A job's pod settings can get here: the CRD keeps affinity terms as written, unchecked."""


def _refusal(exc: ApiException) -> Refused:
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except ValueError:
        message = ""
    return Refused(message or str(exc.reason))


class Kube:
    def __init__(self) -> None:
        self.apps = kubernetes.client.AppsV1Api()
        self.core = kubernetes.client.CoreV1Api()
        self.custom = kubernetes.client.CustomObjectsApi()

    def apply_deployment(self, deployment: dict[str, Any]) -> None:
        """Create the Deployment, or replace it with this one, keeping its current replicas.

        A replace, not a patch: a strategic merge patch keeps whatever the new template no longer
        has (a nodeSelector key a job dropped, a removed extra volume, the key variables of a storage
        Secret no longer named). A conflict (someone wrote in between) raises; the caller retries.
        An invalid Deployment raises Refused."""
        namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        try:
            self.apps.create_namespaced_deployment(namespace, deployment)
            return
        except ApiException as exc:
            if exc.status == 422:
                raise _refusal(exc) from None
            if exc.status != 409:
                raise
        current = self.apps.read_namespaced_deployment(name, namespace)
        body = {
            **deployment,
            "metadata": {**deployment["metadata"], "resourceVersion": current.metadata.resource_version},
            "spec": {**deployment["spec"], "replicas": current.spec.replicas},
        }
        try:
            self.apps.replace_namespaced_deployment(name, namespace, body)
        except ApiException as exc:
            if exc.status == 422:
                raise _refusal(exc) from None
            raise

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})

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

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
