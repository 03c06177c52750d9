"""The chart on the test bed's node, installed as a user would: what tests/node and bench/node.py share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.node import Node
from tests.e2e.cluster import ROOT, render_manifests_module

RELEASE_NAMESPACE = "kompressor"
NAMESPACE = "shop"


@dataclass
class Installed:
    kube: KubeAPI
    node: Node
    rabbitmq: RabbitMQ
    s3: S3Server

    def kubectl(self, *args: str, **kwargs: Any):
        return self.kube.kubectl("-n", NAMESPACE, *args, **kwargs)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def job_status(self, name: str) -> dict[str, Any]:
        return self.get("compjob", name).get("status", {})


def install(kube: KubeAPI, node: Node, rabbitmq: RabbitMQ, s3: S3Server) -> Installed:
    """The CRD from manifests/, the Secrets a user creates, and the chart rendered with the values a
    user would set (`helm template | kubectl apply`); the operator's pod Ready."""
    kube.kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/compressionjobs.kompressor.dev")
    for namespace in (RELEASE_NAMESPACE, NAMESPACE):
        kube.kubectl("create", "namespace", namespace)
        kube.kubectl(
            "create",
            "secret",
            "generic",
            "kompressor-broker",
            "-n",
            namespace,
            f"--from-literal=url={rabbitmq.url}",
        )
        kube.kubectl(
            "create",
            "secret",
            "generic",
            "kompressor-storage",
            "-n",
            namespace,
            f"--from-literal=accessKeyId={s3.access_key}",
            f"--from-literal=secretAccessKey={s3.secret_key}",
        )
    values = {
        "watchNamespaces": [NAMESPACE],
        "storage": {"endpointURL": s3.endpoint_url},
        # verbose: kopf then logs how it found its credentials.
        "operator": {"pollIntervalSeconds": 1, "verbose": True},
    }
    objects = render_manifests_module().render_chart(values, namespace=RELEASE_NAMESPACE)
    kube.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in objects))
    kube.kubectl(
        "wait", "-n", RELEASE_NAMESPACE, "--for=condition=Available", "--timeout=180s", "deployment", "--all"
    )
    return Installed(kube, node, rabbitmq, s3)
