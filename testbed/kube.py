"""A real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager on loopback.

The binaries come from Debian's own Kubernetes source (scripts/build-kube.sh builds them into
~/.cache/kompressor/kube/bin). The API server serves TLS on 127.0.0.1 with token authentication and
RBAC; the controller-manager runs garbage collection by owner reference, the Deployment and ReplicaSet
controllers and the service-account token controllers. There is no kubelet: Pods stay Pending unless
a test's node agent binds and runs them, or a node (testbed/node.py) runs them. For a node the control
plane serves on the node's bridge gateway instead of 127.0.0.1, so that pods reach it too.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from testbed.process import Service, free_port, wait_until

CACHE = Path(os.environ.get("KOMPRESSOR_CACHE", Path.home() / ".cache" / "kompressor"))
BIN = CACHE / "kube" / "bin"
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-kube.sh"
SERVICE_NETWORK = "10.0.0.0/24"  # the `kubernetes` Service is its first address, 10.0.0.1


def binaries_present() -> bool:
    return all((BIN / name).exists() for name in ("etcd", "kube-apiserver", "kube-controller-manager"))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(pki: Path, address: str) -> None:
    """A CA, a serving certificate for `address`, localhost and the `kubernetes` Service, and the
    service-account signing key."""
    pki.mkdir(parents=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=kompressor-testbed-ca",
        cwd=pki,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=pki,
    )
    (pki / "san.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,IP:{address},IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        "apiserver.crt",
        "-extfile",
        "san.ext",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca_file: Path, token: str, user: str, namespace: str = "default") -> dict:
    ca = base64.b64encode(ca_file.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "testbed", "user": user, "namespace": namespace}}],
        "current-context": user,
    }


@dataclass
class KubeAPI:
    """A running control plane and an admin kubeconfig for it."""

    port: int
    run_dir: Path
    admin_token: str
    address: str = "127.0.0.1"
    services: list[Service] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.run_dir / "pki" / "ca.crt"

    @property
    def kubeconfig_path(self) -> Path:
        return self.run_dir / "admin.kubeconfig"

    def write_kubeconfig(self, path: Path, token: str, user: str, namespace: str = "default") -> Path:
        path.write_text(json.dumps(kubeconfig(self.server, self.ca_file, token, user, namespace)))
        return path

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        """A raw GET (for readiness and for tests that check an answer byte for byte)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {token or self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig_path}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop(timeout=10)


def ensure_binaries() -> None:
    if not binaries_present():
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)


def start_kube(run_dir: Path, timeout: float = 60, address: str = "127.0.0.1") -> KubeAPI:
    """The control plane serving on `address`: 127.0.0.1, or a node's bridge gateway (see node.py)."""
    ensure_binaries()
    run_dir = run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    pki = run_dir / "pki"
    _make_pki(pki, address)
    token = secrets.token_hex(16)
    (run_dir / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    api = KubeAPI(port=free_port(), run_dir=run_dir, admin_token=token, address=address)
    try:
        _start_all(api, pki, timeout)
    except BaseException:
        api.stop()
        raise
    return api


def _start_all(api: KubeAPI, pki: Path, timeout: float) -> None:
    run_dir = api.run_dir
    # On a node, pods reach the API server through the `kubernetes` Service, whose Endpoints the API
    # server keeps pointing at its own address; on loopback there is no valid endpoint to keep.
    on_node = api.address != "127.0.0.1"
    etcd_port, etcd_peer = free_port(), free_port()
    etcd = Service(
        "etcd",
        [
            str(BIN / "etcd"),
            f"--data-dir={run_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync=false",
        ],
        run_dir / "etcd.log",
    )
    api.services.append(etcd.start())

    def etcd_healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=2) as response:
            return json.load(response).get("health") == "true"

    etcd.wait_ready(etcd_healthy, timeout)

    apiserver = Service(
        "kube-apiserver",
        [
            str(BIN / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={api.address}",
            f"--advertise-address={api.address}",
            f"--secure-port={api.port}",
            "--insecure-port=0",
            f"--cert-dir={run_dir / 'certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={run_dir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--endpoint-reconciler-type={'lease' if on_node else 'none'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-cluster-ip-range={SERVICE_NETWORK}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,DefaultStorageClass,ResourceQuota",
            "--profiling=false",
            "--v=1",
        ],
        run_dir / "kube-apiserver.log",
    )
    api.services.append(apiserver.start())
    apiserver.wait_ready(lambda: api.get("/readyz")[0] == 200, timeout)
    api.write_kubeconfig(api.kubeconfig_path, api.admin_token, "admin")

    controllers = Service(
        "kube-controller-manager",
        [
            str(BIN / "kube-controller-manager"),
            f"--kubeconfig={api.kubeconfig_path}",
            "--controllers=garbagecollector,deployment,replicaset,serviceaccount,serviceaccount-token,namespace"
            + (",endpoint,endpointslice,podgc,nodelifecycle" if on_node else ""),
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--port=0",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            "--concurrent-gc-syncs=5",
            "--v=1",
        ],
        run_dir / "kube-controller-manager.log",
    )
    api.services.append(controllers.start())

    def default_service_account_has_token() -> bool:
        controllers.check_alive()
        status, body = api.get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200 and bool(json.loads(body).get("secrets"))

    wait_until(default_service_account_has_token, timeout, "kube-controller-manager service accounts")
