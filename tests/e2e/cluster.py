"""An installed kompressor on the test bed: the chart's CRD and RBAC applied to the real API server,
the operator running under kopf as the chart's ServiceAccount, a node agent playing the kubelet,
and a webhook receiver. Used by the operator's end-to-end tests."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.nodeagent import NodeAgent
from testbed.process import free_port, wait_until
from tests.webhooks import verified

ROOT = Path(__file__).resolve().parents[2]
RELEASE_NAMESPACE = "kompressor"
HMAC_KEY = "e2e-webhook-key"


def render_manifests_module():
    spec = importlib.util.spec_from_file_location(
        "render_manifests", ROOT / "scripts" / "render_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_manifests", module)
    spec.loader.exec_module(module)
    return module


@dataclass
class Webhook:
    """A local HTTP server that keeps every POST it receives."""

    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    def start(self) -> Webhook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def signed_correctly(self, headers: dict[str, str], body: bytes) -> bool:
        try:
            verified(headers, body, HMAC_KEY.encode())
        except (KeyError, ValueError):
            return False
        return True

    def stop(self) -> None:
        self._server.shutdown()


@dataclass
class Cluster:
    kube: KubeAPI
    rabbitmq: RabbitMQ
    s3: S3Server
    namespace: str
    operator_kubeconfig: Path
    log_dir: Path
    agent: NodeAgent
    webhook: Webhook
    operator: subprocess.Popen | None = None
    operator_starts: int = 0
    metrics_port: int = field(default_factory=free_port)

    def operator_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.operator_kubeconfig),
            "KOMPRESSOR_BROKER__URL": self.rabbitmq.url,
            **self.s3.env(),
            "KOMPRESSOR_POLL_INTERVAL_SECONDS": "1",
            "KOMPRESSOR_METRICS_PORT": str(self.metrics_port),
            "KOMPRESSOR_WEBHOOK_ALLOW_NETWORKS": '["127.0.0.1/32"]',
            # Jobs may name their own endpoint (with their own Secret) on 127.0.0.1 only: the
            # refusal tests listen on another loopback address.
            "KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS": '["127.0.0.1/32"]',
        }

    def start_operator(self) -> None:
        self.operator = self.spawn_operator("--standalone", log_name=f"operator-{self.operator_starts + 1}")
        self.operator_starts += 1

    def spawn_operator(self, *args: str, log_name: str, metrics_port: int | None = None) -> subprocess.Popen:
        """A kopf operator process (its own session, to kill it with all its threads) as the chart
        runs it: `args` are the chart's mode (--standalone, or --peering=<name>)."""
        log = (self.log_dir / f"{log_name}.log").open("wb")
        kopf = Path(sys.executable).parent / "kopf"
        env = self.operator_env()
        if metrics_port is not None:
            env["KOMPRESSOR_METRICS_PORT"] = str(metrics_port)
        return subprocess.Popen(
            [
                str(kopf),
                "run",
                *args,
                "-m",
                "kompressor_operator.handlers",
                "--namespace",
                self.namespace,
                f"--liveness=http://127.0.0.1:{free_port()}/healthz",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_operator(self) -> None:
        assert self.operator is not None
        os.killpg(self.operator.pid, signal.SIGKILL)
        self.operator.wait(10)

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(20)
            except subprocess.TimeoutExpired:
                self.kill_operator()

    @contextlib.contextmanager
    def running(self) -> Iterator[Cluster]:
        """The node agent and the operator running, the webhook receiver stopped afterwards."""
        self.agent.start()
        self.start_operator()
        try:
            yield self
        finally:
            self.stop_operator()
            self.agent.stop()
            self.webhook.stop()

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.kube.kubectl("-n", self.namespace, *args, **kwargs)

    def operator_metrics(self) -> str:
        """The operator's real /metrics (prometheus_client's server, as in the chart's Service)."""
        return scrape(self.metrics_port)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def job_status(self, name: str) -> dict[str, Any]:
        return self.get("compjob", name).get("status", {})

    def wait_phase(self, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        wait_until(lambda: self.job_status(name).get("phase") in phases, timeout, f"job {name} in {phases}")
        return self.job_status(name)


def service_account_kubeconfig(
    kube: KubeAPI, namespace: str, account: str, path: Path, default_namespace: str
) -> Path:
    """A kubeconfig acting as ServiceAccount `namespace/account`, once its token Secret exists."""

    def token() -> str:
        secrets = json.loads(kube.kubectl("get", "secrets", "-n", namespace, "-o", "json").stdout)
        for secret in secrets["items"]:
            annotations = secret["metadata"].get("annotations", {})
            if (
                secret["type"] == "kubernetes.io/service-account-token"
                and annotations.get("kubernetes.io/service-account.name") == account
            ):
                return base64.b64decode(secret["data"]["token"]).decode()
        return ""

    wait_until(lambda: bool(token()), 30, f"ServiceAccount {namespace}/{account}'s token")
    return kube.write_kubeconfig(path, token(), account, default_namespace)


def install(
    kube: KubeAPI,
    rabbitmq: RabbitMQ,
    s3: S3Server,
    log_dir: Path,
    namespace: str,
    values: dict[str, Any] | None = None,
) -> Cluster:
    """Apply the chart's CRDs and its RBAC (rendered with `values`) for one watched namespace, make
    the Secrets the workers read, and build the operator's kubeconfig from the chart
    ServiceAccount's token."""
    log_dir.mkdir(parents=True, exist_ok=True)
    render = render_manifests_module()
    peering = ROOT / "charts" / "kompressor" / "crds" / "clusterkopfpeerings.kopf.dev.yaml"
    kube.kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml"), "-f", str(peering))
    for crd in ("compressionjobs.kompressor.dev", "clusterkopfpeerings.kopf.dev"):
        kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd}")
    for name in (RELEASE_NAMESPACE, namespace):
        kube.kubectl("create", "namespace", name, check=False)
    objects = render.render_chart(
        {"watchNamespaces": [namespace], **(values or {})}, namespace=RELEASE_NAMESPACE
    )
    rbac = [
        o
        for o in objects
        if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    kube.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in rbac))
    account = next(o for o in rbac if o["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = service_account_kubeconfig(
        kube, RELEASE_NAMESPACE, account, log_dir / "operator.kubeconfig", namespace
    )
    secrets = {
        "kompressor-broker": {"url": rabbitmq.url},
        "kompressor-storage": {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key},
        "hook-hmac": {"hmacKey": HMAC_KEY},
    }
    for name, data in secrets.items():
        args = [f"--from-literal={key}={value}" for key, value in data.items()]
        kube.kubectl("create", "secret", "generic", name, "-n", namespace, *args)
    agent = NodeAgent(kube, log_dir=log_dir / "pods", namespaces=[namespace])
    return Cluster(kube, rabbitmq, s3, namespace, kubeconfig, log_dir, agent, Webhook().start())


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def step_runs(port: int, namespace: str | None = None, name: str | None = None) -> float:
    """How often the operator whose /metrics is on `port` ran a job's step timer (every job's
    without `name`): `kompressor_steps_total`; 0 before its first run, or unreachable (not running
    yet)."""
    try:
        text = scrape(port)
    except OSError:
        return 0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "kompressor_steps"
        for sample in family.samples
        if sample.name == "kompressor_steps_total"
        and name in (None, sample.labels["compressionjob"])
        and namespace in (None, sample.labels["namespace"])
    )


def job_manifest(name: str, bucket: str, s3: S3Server, webhook: Webhook | None = None, **spec: Any) -> str:
    body: dict[str, Any] = {
        "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
        "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
        "storage": {"endpointURL": s3.endpoint_url},
        "output": {"format": "webp", "quality": 75, "resize": {"maxWidth": 640, "maxHeight": 640}},
        "workers": {"maxReplicas": 3, "tasksPerReplica": 8, "processesPerPod": 1, "scaleDownDelaySeconds": 3},
    }
    if webhook is not None:
        body["notify"] = {"webhookURL": webhook.url, "secretRef": "hook-hmac"}
    body.update(spec)
    return yaml.safe_dump(
        {
            "apiVersion": "kompressor.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def replicas_over_time(cluster: Cluster, name: str, stop: threading.Event, into: list) -> None:
    """Sample the worker Deployment's spec.replicas until `stop` (for the scale-decision table)."""
    started = time.monotonic()
    while not stop.is_set():
        result = cluster.kubectl(
            "get",
            "deployment",
            f"{name}-workers",
            "-o",
            "jsonpath={.spec.replicas} {.status.readyReplicas}",
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            parts = result.stdout.split()
            into.append(
                (round(time.monotonic() - started, 1), int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
            )
        stop.wait(0.5)
