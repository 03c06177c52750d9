"""Every object the chart renders is accepted by the real API server (server-side apply)."""

from __future__ import annotations

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
