"""The README's cluster quick start, run line by line on a fresh API server of the test bed.

The lines are read from the README's code block, so the test fails when the README drifts. Each
runs in bash with the README's variables set to the test bed's RabbitMQ and S3. Two stand-ins, as in
test_operator.py: `helm install` renders the chart with the repository's renderer (the chart's
crds/ first, then its templates with the `--set` values) and applies it server-side, as helm would;
the operator Deployment it made is then run as a local kopf process with that Deployment's own
command, arguments and environment (its Secrets read from the API server) under the chart's
ServiceAccount; and a node agent plays the kubelet for the job's namespace.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.kube import start_kube
from testbed.nodeagent import NodeAgent
from testbed.process import free_port, wait_until
from tests.corpus import real_photos
from tests.e2e.cluster import ROOT, render_manifests_module, service_account_kubeconfig
from tests.jobs import upload

pytestmark = pytest.mark.kube

HELM_ARGS = "KOMPRESSOR_TEST_HELM_ARGS"
# A shell function in place of helm: it writes its arguments, as bash expanded them, for the test.
HELM_STAND_IN = f'helm() {{ printf "%s\\0" "$@" > "${HELM_ARGS}"; }}'


def readme_commands() -> list[str]:
    """The lines of the README's cluster quick start: the code block of "On a cluster" that installs."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## On a cluster\n", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "helm install" in b)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def helm_values(sets: list[str]) -> dict[str, Any]:
    """`--set a.b=v` values as helm reads them (strings, and `{x,y}` lists: all this README uses)."""
    values: dict[str, Any] = {}
    for item in sets:
        path, _, raw = item.partition("=")
        value: Any = raw[1:-1].split(",") if raw.startswith("{") and raw.endswith("}") else raw
        *parents, leaf = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values


def test_helm_values_read_lists_and_nested_keys():
    assert helm_values(["storage.endpointURL=http://x:1", "watchNamespaces={a,b}"]) == {
        "storage": {"endpointURL": "http://x:1"},
        "watchNamespaces": ["a", "b"],
    }


@pytest.fixture(scope="module")
def fresh_kube(tmp_path_factory) -> Iterator[KubeAPI]:
    """Its own control plane: the README creates namespaces and cluster-wide objects from nothing."""
    api = start_kube(tmp_path_factory.mktemp("readme") / "kube")
    yield api
    api.stop()


class Operator:
    """The chart's operator Deployment run as a local process, as its pod would run it."""

    def __init__(self, kube: KubeAPI, namespace: str, log_dir: Path):
        self.kube, self.namespace, self.log_dir = kube, namespace, log_dir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        deployments = self._get("deployments", "-l", "app.kubernetes.io/component=operator")["items"]
        assert len(deployments) == 1, [d["metadata"]["name"] for d in deployments]
        pod = deployments[0]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {key: value for key, value in os.environ.items() if not key.startswith("KOMPRESSOR_")}
        for var in container.get("env", []):
            env[var["name"]] = self._resolve(var)
        env["KOMPRESSOR_METRICS_PORT"] = "0"  # the pod's port is the host's here
        env["KUBECONFIG"] = str(
            service_account_kubeconfig(
                self.kube,
                self.namespace,
                pod["serviceAccountName"],
                self.log_dir / "operator.kubeconfig",
                self.namespace,
            )
        )
        args = [
            f"--liveness=http://127.0.0.1:{free_port()}/healthz" if arg.startswith("--liveness=") else arg
            for arg in container.get("args", [])
        ]
        command = [str(Path(sys.executable).parent / container["command"][0]), *container["command"][1:]]
        log = (self.log_dir / "operator.log").open("wb")
        self.process = subprocess.Popen(
            [*command, *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def _get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kube.kubectl("get", "-n", self.namespace, *args, "-o", "json").stdout)

    def _resolve(self, var: dict[str, Any]) -> str:
        if "value" in var:
            return var["value"]
        ref = var["valueFrom"]["secretKeyRef"]
        secret = self._get("secret", ref["name"])
        return base64.b64decode(secret["data"][ref["key"]]).decode()


def test_the_readme_cluster_quick_start_runs_as_written(
    fresh_kube: KubeAPI, rabbitmq: RabbitMQ, s3: S3Server, tmp_path: Path
):
    kube = fresh_kube
    lines = readme_commands()
    example = yaml.safe_load((ROOT / "examples" / "s3-to-webp.yaml").read_text())
    source, dest = example["spec"]["source"]["s3"], example["spec"]["destination"]["s3"]
    client = s3.client()
    for bucket in {source["bucket"], dest["bucket"]}:
        if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=bucket)
    photos = dict(list(real_photos(max_side=700).items())[:6])
    upload(s3, source["bucket"], photos, prefix=source["prefix"])

    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("KOMPRESSOR_")},
        "KUBECONFIG": str(kube.kubeconfig_path),
        "BROKER_URL": rabbitmq.url,
        "S3_ENDPOINT": s3.endpoint_url,
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
        HELM_ARGS: str(tmp_path / "helm-args"),
    }
    operator, agent = None, None
    watch_line = lines[-1]
    assert re.search(r"kubectl get compjob -n \S+ -w\b", watch_line), watch_line
    try:
        for line in lines[:-1]:
            applied = re.match(r"kubectl apply -n (\S+) ", line)
            if applied and agent is None:  # the job's pods need a kubelet from here on
                agent = NodeAgent(kube, log_dir=tmp_path / "pods", namespaces=[applied[1]]).start()
            subprocess.run(
                ["bash", "-euo", "pipefail", "-c", f"{HELM_STAND_IN}\n{line}"], cwd=ROOT, env=env, check=True
            )
            if line.startswith("helm install"):
                namespace = _helm_install(kube, Path(env[HELM_ARGS]))
                operator = Operator(kube, namespace, tmp_path)
                operator.start()
        assert operator is not None and agent is not None, "the README installs no operator or applies no job"

        # The last line watches the job: it must print the job Succeeded.
        watch = subprocess.Popen(
            ["bash", "-c", watch_line],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        seen: list[str] = []

        def read() -> None:
            assert watch.stdout is not None
            for row in watch.stdout:
                seen.append(row)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_until(lambda: any(" Succeeded " in row for row in seen), 240, "the watch to show Succeeded")
        finally:
            os.killpg(watch.pid, signal.SIGTERM)
            watch.wait(10)
    finally:
        if operator is not None:
            operator.stop()
        if agent is not None:
            agent.stop()

    name = example["metadata"]["name"]
    assert seen[0].split()[:2] == ["NAME", "PHASE"], seen[0]
    row = next(row for row in seen if " Succeeded " in row).split()
    assert row[:3] == [name, "Succeeded", f"{len(photos)}/{len(photos)}"], row
    outputs = client.list_objects_v2(Bucket=dest["bucket"], Prefix=dest["prefix"]).get("Contents", [])
    assert sum(1 for o in outputs if o["Key"].endswith(".webp")) == len(photos)


def _helm_install(kube: KubeAPI, args_file: Path) -> str:
    """Do what the README's `helm install RELEASE CHART -n NS --set ...` asks; returns NS."""
    args = args_file.read_text().split("\0")[:-1]
    assert args[:1] == ["install"], args
    release, chart, *flags = args[1:]
    assert (release, chart) == ("kompressor", "charts/kompressor"), args
    namespace, sets = "default", []
    while flags:
        flag, value, *flags = flags
        if flag in ("-n", "--namespace"):
            namespace = value
        elif flag == "--set":
            sets.append(value)
        else:
            raise AssertionError(f"the README passes helm a flag this stand-in does not know: {flag}")
    for crd in sorted((ROOT / chart / "crds").glob("*.yaml")):
        kube.kubectl("apply", "--server-side", "-f", str(crd))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/compressionjobs.kompressor.dev")
    objects = render_manifests_module().render_chart(helm_values(sets), namespace=namespace)
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Namespace"):
            obj["metadata"].setdefault("namespace", namespace)
    documents = "\n---\n".join(yaml.safe_dump(o) for o in objects)
    kube.kubectl("apply", "--server-side", "-f", "-", input=documents)
    return namespace
