"""The operator end to end (tests/e2e/cluster.py) when what a job depends on goes wrong: forged
results on its queue, a store that refuses the ledger's writes for a while, a URL manifest read from
S3, and one that is not a URL list.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kompressor.messages import JobRef, Outcome, Result, result_queue
from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.process import free_port
from tests.chaos.tools import S3Faults, photo_inputs, upload_parallel, wait_for
from tests.e2e.cluster import Cluster, install, job_manifest

pytestmark = pytest.mark.kube

NAMESPACE = "faults"
URL_HOST = "127.0.0.2"  # loopback the workers are allowed to fetch from (URL inputs may not otherwise)


@pytest.fixture(scope="module")
def cluster(kube: KubeAPI, rabbitmq: RabbitMQ, s3: S3Server, tmp_path_factory) -> Iterator[Cluster]:
    installed = install(kube, rabbitmq, s3, tmp_path_factory.mktemp("faults-operator"), NAMESPACE)
    installed.agent.env_overrides["KOMPRESSOR_URL_ALLOW_NETWORKS"] = f'["{URL_HOST}/32"]'
    # The operator's /metrics on, to read its counters.
    environment = {**installed.operator_env(), "KOMPRESSOR_METRICS_PORT": str(free_port())}
    installed.operator_env = lambda: environment  # type: ignore[method-assign]
    with installed.running():
        yield installed


def _metric(cluster: Cluster, name: str, **labels: str) -> float:
    port = cluster.operator_env()["KOMPRESSOR_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def _series(name: str) -> dict[str, str]:
    """The labels of a job's series (metrics.py)."""
    return {"namespace": NAMESPACE, "compressionjob": name}


def _bucket(s3: S3Server, inputs: int) -> str:
    name = f"faults-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=name)
    upload_parallel(s3, name, photo_inputs(inputs))
    return name


def _condition(cluster: Cluster, name: str, type: str) -> dict:
    return next((c for c in cluster.job_status(name).get("conditions", []) if c["type"] == type), {})


def _events(cluster: Cluster, name: str) -> list[dict]:
    return cluster.get("events", "--field-selector", f"involvedObject.name={name}")["items"]


def _manifest_ids(s3: S3Server, url: str) -> list[int]:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return sorted(json.loads(line)["id"] for line in body.splitlines())


def test_forged_results_on_a_jobs_queue_are_dropped_counted_and_the_job_ends_exactly(
    cluster: Cluster, rabbitmq: RabbitMQ, s3: S3Server
):
    total, name = 12, "forged"
    bucket = _bucket(s3, total)
    # Suspended (no workers) until the forged results are read: the job cannot end before them.
    cluster.kubectl("apply", "-f", "-", input=job_manifest(name, bucket, s3, suspend=True))
    wait_for(lambda: cluster.job_status(name).get("published", 0) == total, 60, "the tasks published")
    job = JobRef(namespace=NAMESPACE, name=name, uid=cluster.get("compjob", name)["metadata"]["uid"])
    other = job.model_copy(update={"uid": job.uid[:9] + "0000-4000-8000-000000000000"})  # same queues
    forged = Result(job=job, id=0, outcome=Outcome.failed, source="s3://x/forged", reason="forged")
    bodies = [
        forged.model_copy(update={"job": other}).encode(),  # would fail input 0
        forged.model_copy(update={"id": 2**32}).encode(),  # 512 MiB of bitmap on d116cca
        json.dumps(json.loads(forged.encode()) | {"id": 10**20}).encode(),  # its step failed every 60 s
    ]
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", result_queue(job), body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()
    refused = ("wrong_job", "unpublished_id", "malformed")

    def all_refused() -> bool:
        return all(
            _metric(cluster, "kompressor_refused_results_total", **_series(name), reason=r) for r in refused
        )

    wait_for(all_refused, 60, "the forged results read and refused")
    counted = {
        r: _metric(cluster, "kompressor_refused_results_total", **_series(name), reason=r) for r in refused
    }
    assert counted == dict.fromkeys(refused, 1)
    cluster.kubectl("patch", "compjob", name, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    status = cluster.wait_phase(name, {"Succeeded", "Failed"}, 240)
    assert (status["phase"], status["total"], status["succeeded"], status["failed"]) == (
        "Succeeded",
        total,
        total,
        0,
    )
    assert _manifest_ids(s3, status["manifest"]) == list(range(total))
    # An ended job's series are removed (metrics.py: forget).
    assert all(
        _metric(cluster, "kompressor_refused_results_total", **_series(name), reason=r) == 0 for r in refused
    )


def test_a_store_refusing_the_ledger_shows_as_a_condition_and_an_event_until_it_recovers(
    cluster: Cluster, s3: S3Server
):
    total, name = 16, "outage"
    bucket = _bucket(s3, total)

    def ledger_parts(method: str, path: str) -> bool:
        return method == "PUT" and f"/{bucket}/out/.kompressor/" in path and "/part-" in path

    # The job's endpoint is the proxy, for the operator and the workers alike; only the ledger's part
    # writes are refused, so the workers go on storing outputs while the operator cannot record them.
    faults = S3Faults(s3.port, refuse=ledger_parts).start()
    faults.failing.set()
    try:
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=job_manifest(
                name,
                bucket,
                s3,
                storage={"endpointURL": faults.url, "credentialsSecret": "kompressor-storage"},
            ),
        )
        applied = time.monotonic()
        wait_for(
            lambda: _condition(cluster, name, "StorageReachable").get("status") == "False", 180, "the outage"
        )
        shown = time.monotonic() - applied
        during = cluster.job_status(name)
        storage = _condition(cluster, name, "StorageReachable")
        assert during["phase"] == "Running" and during.get("succeeded", 0) == 0
        assert storage["reason"] == "StorageError"
        assert "InternalError" in storage["message"] and "PutObject" in storage["message"], storage
        warnings = [e for e in _events(cluster, name) if e["reason"] == "StorageError"]
        assert warnings and warnings[0]["type"] == "Warning" and "InternalError" in warnings[0]["message"]
        assert faults.refused

        faults.failing.clear()
        cleared = time.monotonic()
        status = cluster.wait_phase(name, {"Succeeded", "Failed"}, 240)
        recovered = time.monotonic() - cleared
        print(f"\napply → StorageReachable False: {shown:.1f}s; store back → Succeeded: {recovered:.1f}s")
    finally:
        faults.failing.clear()
        faults.stop()
    storage = _condition(cluster, name, "StorageReachable")
    assert (storage["status"], storage["reason"]) == ("True", "Reachable")
    assert _condition(cluster, name, "BrokerReachable")["status"] == "True"
    assert (status["phase"], status["total"], status["succeeded"], status["failed"]) == (
        "Succeeded",
        total,
        total,
        0,
    )
    assert _manifest_ids(s3, status["manifest"]) == list(range(total))
    recovered = [e for e in _events(cluster, name) if e["reason"] == "StorageRecovered"]
    assert recovered and recovered[0]["type"] == "Normal"


@pytest.fixture
def url_server(tmp_path: Path) -> Iterator[tuple[ThreadingHTTPServer, dict[str, bytes]]]:
    photos = photo_inputs(6)
    for name, body in photos.items():
        (tmp_path / name).write_bytes(body)
    server = ThreadingHTTPServer(
        (URL_HOST, 0), functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, photos
    server.shutdown()


def test_a_url_manifest_from_s3_runs_and_a_malformed_one_fails_the_job(
    cluster: Cluster, s3: S3Server, url_server: tuple[ThreadingHTTPServer, dict[str, bytes]]
):
    server, photos = url_server
    bucket = _bucket(s3, 0)
    urls = [f"http://{URL_HOST}:{server.server_port}/{name}" for name in photos]
    good = "url,title\n" + "".join(f'{url},"photo {i}, jpeg"\n' for i, url in enumerate(urls))
    s3.client().put_object(Bucket=bucket, Key="lists/good.csv", Body=good.encode())
    s3.client().put_object(
        Bucket=bucket, Key="lists/bad.csv", Body=f"url\n{urls[0]}\nfile:///etc/passwd\n".encode()
    )

    def apply(name: str, key: str) -> None:
        source = {"urls": {"manifest": {"bucket": bucket, "key": key}}}
        cluster.kubectl("apply", "-f", "-", input=job_manifest(name, bucket, s3, source=source))

    apply("urls", "lists/good.csv")
    apply("badlist", "lists/bad.csv")
    status = cluster.wait_phase("urls", {"Succeeded", "Failed"}, 240)
    assert (status["phase"], status["total"], status["succeeded"]) == ("Succeeded", len(urls), len(urls))
    assert _manifest_ids(s3, status["manifest"]) == list(range(len(urls)))

    status = cluster.wait_phase("badlist", {"Succeeded", "Failed"}, 60)
    failed = _condition(cluster, "badlist", "Failed")
    assert (status["phase"], failed["status"], failed["reason"]) == ("Failed", "True", "ManifestInvalid")
    assert f"s3://{bucket}/lists/bad.csv" in failed["message"] and "file:///etc/passwd" in failed["message"]
    events = [e for e in _events(cluster, "badlist") if e["reason"] == "ManifestInvalid"]
    assert events and events[0]["type"] == "Warning"
    assert status.get("published", 0) == 0
