"""Kubernetes adapter of the operator: the worker Deployment, its scale, Secrets, job deletion.

Blocking client calls, made from worker threads (asyncio.to_thread) by the handlers. Nothing here
decides anything: builders.py says what a Deployment is, policy.py how many replicas it gets.
"""

from __future__ import annotations

import base64
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


class Kube:
    def __init__(self) -> None:
        self.apps = kubernetes.client.AppsV1Api()
        self.core = kubernetes.client.CoreV1Api()
        self.custom = kubernetes.client.CustomObjectsApi()

    def apply_deployment(self, deployment: dict[str, Any]) -> None:
        """Create the Deployment, or bring its template up to date (keeping the current replicas)."""
        namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        try:
            self.apps.create_namespaced_deployment(namespace, deployment)
        except ApiException as exc:
            if exc.status != 409:
                raise
            patch = {
                "metadata": {"labels": deployment["metadata"]["labels"]},
                "spec": {"template": deployment["spec"]["template"]},
            }
            self.apps.patch_namespaced_deployment(name, namespace, patch)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})

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

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
