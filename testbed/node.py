"""A real Kubernetes node: containerd, kubelet, kube-proxy and kube-scheduler, on a bridge of its own.

The kubelet, kube-proxy and kube-scheduler come from the same Debian Kubernetes source as the control
plane (scripts/build-kube.sh); containerd, runc and the CNI plugins are Debian's. The images it runs
are built from the repository's Dockerfiles, unchanged, by scripts/build-images.sh, and imported
into the node's own containerd under the names the chart uses.

The network is one Linux bridge with a /24 of its own (`claim_bridge`): pods get addresses on it,
and the machine is its gateway. The control plane, RabbitMQ and S3 listen on that gateway address
(start_kube/start_rabbitmq/start_s3 with `host=`), which is how pods reach them; pods reach the API
server through the `kubernetes` Service, which kube-proxy routes there. Nothing is masqueraded out:
the bridge and loopback are the only networks involved. Every file (containerd's root and state,
kubelet's, the CNI configuration and IP allocations) stays under the node's run directory.

Needs root (it is run as root on CI) and cgroup v1 or v2 with the cgroupfs driver. One node runs on a
machine at a time: the kubelet's pod cgroups (/kubepods) and the KUBE- iptables chains are
machine-wide, and a second kubelet would remove the first one's pods as orphans. A lock file in the
cache makes a second node wait for the first to stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from testbed.kube import BIN, CACHE, SERVICE_NETWORK, KubeAPI
from testbed.process import Service, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
IMAGES_SCRIPT = ROOT / "scripts" / "build-images.sh"
CNI_BIN = Path("/usr/lib/cni")
NODE_NAME = "kompressor-node"
LOCK = CACHE / "node.lock"
# Where the node's bridges come from: 10.213.N.0/24, the first N no interface of the machine uses.
BRIDGE_POOL = ipaddress.ip_network("10.213.0.0/16")


def node_binaries_present() -> bool:
    return all((BIN / name).exists() for name in ("kubelet", "kube-proxy", "kube-scheduler")) and all(
        shutil.which(tool) for tool in ("containerd", "ctr", "runc", "iptables", "buildah", "debootstrap")
    )


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@dataclass
class Bridge:
    """A Linux bridge whose address is the gateway of its /24."""

    name: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def stop(self) -> None:
        """Delete the bridge (stopped like the services, by whoever claimed it)."""
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)


def free_bridge(used: list[ipaddress.IPv4Network]) -> Bridge:
    """The first /24 of BRIDGE_POOL that overlaps none of the machine's networks, named by its index."""
    for index, subnet in enumerate(BRIDGE_POOL.subnets(new_prefix=24)):
        if not any(subnet.overlaps(net) for net in used):
            return Bridge(f"kompressor{index}", subnet)
    raise RuntimeError(f"no free /24 left in {BRIDGE_POOL}")


def claim_bridge() -> Bridge:
    """Create a bridge on a /24 that no interface of the machine uses."""
    used = [
        ipaddress.ip_interface(entry["local"] + "/" + str(entry["prefixlen"])).network
        for link in json.loads(_ip("-j", "-4", "addr"))
        for entry in link.get("addr_info", [])
    ]
    bridge = free_bridge(used)
    _ip("link", "add", bridge.name, "type", "bridge")
    try:
        _ip("addr", "add", f"{bridge.gateway}/24", "dev", bridge.name)
        _ip("link", "set", bridge.name, "up")
    except BaseException:
        bridge.stop()
        raise
    return bridge


def build_images() -> dict[str, Path]:
    """The node's image archives by name (pause, worker, operator), built or taken from the cache."""
    result = subprocess.run(["bash", str(IMAGES_SCRIPT)], check=True, capture_output=True, text=True)
    return {name: Path(path) for name, path in (line.split() for line in result.stdout.splitlines())}


@dataclass
class Node:
    """A running node registered with `kube` as NODE_NAME."""

    kube: KubeAPI
    bridge: Bridge
    run_dir: Path
    images: dict[str, Path]
    lock: IO[bytes]
    services: list[Service] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd" / "containerd.sock"

    def ctr(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return result.stdout

    def ready(self) -> bool:
        status, body = self.kube.get(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        conditions = json.loads(body)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def stop(self) -> None:
        """Every pod removed through the API first (the kubelet then removes their sandboxes, veths
        and IPs), what is left removed through containerd, then the services stopped and what they
        leave in the machine undone: network namespaces, KUBE- iptables chains, and the mounts under
        the run directory (the kubelet bind-mounts its own root). The bridge stays for its owner."""
        if self.kube.services and all(s.alive() for s in self.services):
            # The workloads too: a ReplicaSet would replace the pods deleted here.
            self.kube.kubectl(
                "delete",
                "deployments,replicasets,statefulsets,daemonsets,jobs,pods",
                "--all",
                "--all-namespaces",
                "--grace-period=0",
                "--force",
                check=False,
            )
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not self.ctr("tasks", "ls", "-q").split(), 60, "pods removed")
        for service in reversed(self.services[1:]):
            service.stop(timeout=10)
        netns = self._remove_containers() if self.services and self.services[0].alive() else []
        if self.services:
            self.services[0].stop(timeout=10)
        for path in netns:
            subprocess.run(["umount", path], capture_output=True)
            Path(path).unlink(missing_ok=True)
        _drop_kube_iptables()
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if Path(m).is_relative_to(self.run_dir)), reverse=True):
            subprocess.run(["umount", "--lazy", mount], capture_output=True)
        self.lock.close()  # releases the machine's node lock

    def _remove_containers(self) -> list[str]:
        """Kill and delete every container still in containerd; the network namespaces they held."""
        netns = []
        for container in self.ctr("containers", "ls", "-q").split():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                spec = json.loads(self.ctr("containers", "info", container)).get("Spec", {})
                netns += [
                    ns["path"]
                    for ns in spec.get("linux", {}).get("namespaces", [])
                    if ns["type"] == "network" and ns.get("path")
                ]
                self.ctr("tasks", "kill", "--signal", "SIGKILL", container, timeout=10)
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                wait_until(lambda c=container: not _has_task(self, c), 10, "task killed")
                self.ctr("tasks", "delete", container, timeout=10)
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self.ctr("containers", "delete", container, timeout=10)
        return sorted(set(netns))


def _has_task(node: Node, container: str) -> bool:
    listing = node.ctr("tasks", "ls").split("\n")[1:]
    return any(line.split()[:1] == [container] and "STOPPED" not in line for line in listing)


def _drop_kube_iptables() -> None:
    """Remove the chains and rules the kubelet and kube-proxy wrote (every one is named KUBE-...)."""
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    if "KUBE-" in saved:
        kept = "".join(line + "\n" for line in saved.splitlines() if "KUBE-" not in line)
        subprocess.run(["iptables-restore"], input=kept, text=True, capture_output=True, check=True)


def _take_lock(timeout: float) -> IO[bytes]:
    """The machine's node lock, waiting up to `timeout` for another node to stop."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = LOCK.open("wb")

    def taken() -> bool:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True

    try:
        wait_until(taken, timeout, f"the node lock {LOCK} (another node is running)", interval=1)
    except BaseException:
        lock.close()
        raise
    return lock


def start_node(
    kube: KubeAPI, bridge: Bridge, run_dir: Path, timeout: float = 120, lock_timeout: float = 1800
) -> Node:
    """containerd with the images imported, then the kubelet (Ready), kube-proxy and kube-scheduler."""
    images = build_images()
    run_dir = run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    node = Node(kube, bridge, run_dir, images, _take_lock(lock_timeout))
    try:
        _start_containerd(node, timeout)
        _start_kubernetes(node, timeout)
    except BaseException:
        node.stop()
        raise
    return node


def _pause_ref(archive: Path) -> str:
    return "localhost/kompressor/pause:" + archive.stem.removeprefix("pause-")


def _start_containerd(node: Node, timeout: float) -> None:
    """containerd with its CRI on the node's bridge, and the images imported."""
    run_dir, bridge, images = node.run_dir, node.bridge, node.images
    cni_conf = run_dir / "cni" / "net.d"
    cni_conf.mkdir(parents=True)
    # Pods reach the machine on the bridge itself (its gateway address) and the Service network (where
    # kube-proxy's rules lead back to the gateway) through it; nothing else is routed and nothing is
    # masqueraded, so pods have no way off this machine.
    (cni_conf / "10-kompressor.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "kompressor",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge.name,
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": str(bridge.subnet), "gateway": bridge.gateway}]],
                            "routes": [{"dst": SERVICE_NETWORK}],
                            "dataDir": str(run_dir / "cni" / "ipam"),
                        },
                    }
                ],
            }
        )
    )
    containerd_dir = run_dir / "containerd"
    containerd_dir.mkdir()
    # restrict_oom_score_adj: the sandbox asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE
    # (absent in some VMs); runc then fails with "can't get final child's PID from pipe: EOF".
    (containerd_dir / "config.toml").write_text(
        f"""version = 2
root = "{containerd_dir / "root"}"
state = "{containerd_dir / "state"}"
[grpc]
  address = "{node.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{_pause_ref(images["pause"])}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
"""
    )
    containerd = Service(
        "containerd",
        ["containerd", f"--config={containerd_dir / 'config.toml'}"],
        run_dir / "containerd.log",
    )
    node.services.append(containerd.start())
    containerd.wait_ready(lambda: bool(node.ctr("version", timeout=5)), timeout)
    for name, archive in images.items():
        started = time.monotonic()
        node.ctr("images", "import", str(archive))
        print(f"node: imported {name} in {time.monotonic() - started:.1f}s", file=sys.stderr)


def _start_kubernetes(node: Node, timeout: float) -> None:
    """The kubelet (until the node is Ready), kube-proxy (until it routes the `kubernetes` Service)
    and kube-scheduler."""
    run_dir, kube, bridge = node.run_dir, node.kube, node.bridge

    kubeconfig = kube.write_kubeconfig(run_dir / "node.kubeconfig", kube.admin_token, "admin")
    kubelet_dir = run_dir / "kubelet"
    kubelet_dir.mkdir()
    # The API server reaches the kubelet (logs, exec) at the gateway; anonymous access is allowed
    # there, which is only acceptable because nothing outside this machine can reach the bridge.
    (run_dir / "kubelet.json").write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": bridge.gateway,
                "port": free_port(),
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": free_port(),
                "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
                "authorization": {"mode": "AlwaysAllow"},
                "cgroupDriver": "cgroupfs",
                "failSwapOn": False,
                "serializeImagePulls": False,
                "evictionHard": {
                    "memory.available": "50Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                },
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "syncFrequency": "5s",
                "fileCheckFrequency": "5s",
            }
        )
    )
    kubelet = Service(
        "kubelet",
        [
            str(BIN / "kubelet"),
            f"--config={run_dir / 'kubelet.json'}",
            f"--kubeconfig={kubeconfig}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{node.socket}",
            f"--root-dir={kubelet_dir}",
            f"--cert-dir={kubelet_dir / 'pki'}",
            f"--node-ip={bridge.gateway}",
            f"--hostname-override={NODE_NAME}",
            "--v=1",
        ],
        run_dir / "kubelet.log",
    )
    node.services.append(kubelet.start())
    kubelet.wait_ready(node.ready, timeout)

    (run_dir / "kube-proxy.json").write_text(
        json.dumps(
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": str(kubeconfig)},
                "mode": "iptables",
                "bindAddress": bridge.gateway,
                "healthzBindAddress": f"127.0.0.1:{free_port()}",
                "metricsBindAddress": f"127.0.0.1:{free_port()}",
                "clusterCIDR": str(bridge.subnet),
                "hostnameOverride": NODE_NAME,
                # Leave the machine's conntrack table size alone.
                "conntrack": {"maxPerCore": 0},
            }
        )
    )
    proxy = Service(
        "kube-proxy",
        [str(BIN / "kube-proxy"), f"--config={run_dir / 'kube-proxy.json'}", "--v=1"],
        run_dir / "kube-proxy.log",
    )
    node.services.append(proxy.start())
    scheduler = Service(
        "kube-scheduler",
        [
            str(BIN / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--v=1",
        ],
        run_dir / "kube-scheduler.log",
    )
    node.services.append(scheduler.start())
    wait_until(
        lambda: proxy.check_alive() and scheduler.check_alive() and _service_routed(), 60, "kube-proxy"
    )


def _service_routed() -> bool:
    """kube-proxy has written the `kubernetes` Service's rules (its ClusterIP is 10.0.0.1)."""
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return "10.0.0.1/32" in rules and "KUBE-SVC" in rules
