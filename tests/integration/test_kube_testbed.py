"""The test bed's Kubernetes API server is real: the CRD registers, its schema judges every apply."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from kompressor.crd import crd
from testbed import KubeAPI

SAMPLE = {
    "apiVersion": "kompressor.dev/v1alpha1",
    "kind": "CompressionJob",
    "metadata": {"name": "catalog"},
    "spec": {
        "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
        "destination": {"s3": {"bucket": "web", "prefix": "products/"}},
        "output": {"format": "webp", "quality": 80, "resize": {"maxWidth": 1600, "maxHeight": 1600}},
    },
}


@pytest.fixture(scope="module")
def crd_installed(kube: KubeAPI) -> KubeAPI:
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd()))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/compressionjobs.kompressor.dev")
    return kube


@pytest.fixture
def namespace(kube: KubeAPI) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    return name


def test_apply_a_compression_job_and_read_it_back(crd_installed: KubeAPI, namespace: str):
    crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(SAMPLE))
    got = json.loads(crd_installed.kubectl("get", "compjob", "catalog", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["output"] == SAMPLE["spec"]["output"] | {"stripMetadata": True, "neverLarger": True}
    assert got["spec"]["destination"]["existing"] == "skip"  # defaulted by the API server's schema
    table = crd_installed.kubectl("get", "compressionjobs", "-n", namespace).stdout
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "DONE", "FAILED", "WORKERS", "SAVED", "AGE"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"output": {"quality": 101}}, "spec.output.quality"),
        ({"output": {"format": "bmp"}}, "spec.output.format"),
        ({"limits": {"maxAttempts": 0}}, "spec.limits.maxAttempts"),
        ({"source": {"s3": {"bucket": "raw"}, "urls": {"items": ["https://x/a.jpg"]}}}, "spec.source"),
        ({"destination": {"s3": {"bucket": "NO"}}}, "spec.destination.s3.bucket"),
        ({"notify": {"webhookURL": "http://hooks.example.com/a b"}}, "spec.notify.webhookURL"),
        ({"notify": {"webhookURL": "http://hooks.example.com:99999/"}}, "spec.notify.webhookURL"),
    ],
)
def test_an_invalid_job_is_rejected_naming_the_field(crd_installed: KubeAPI, namespace: str, change, named):
    job = json.loads(json.dumps(SAMPLE))
    job["spec"].update(change)
    result = crd_installed.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job), check=False
    )
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
