"""A node agent that plays the kubelet for one Node of the test bed's control plane.

The test bed runs a real kube-apiserver and kube-controller-manager but no kubelet, so the Pods a
Deployment's ReplicaSet creates stay Pending. `NodeAgent` registers a Node, binds the Pods it can run
to it (through the `pods/binding` subresource, as a scheduler does), runs each Pod's one container as a
local `kompressor-worker` process with the environment the Pod spec gives it (values, Secret and
ConfigMap keys, the downward API), reports Pod status as a kubelet does (Pending with
CreateContainerConfigError, Running, Ready from the readiness probe, restarts), and on a Pod's
deletion sends SIGTERM, waits the Pod's grace period, SIGKILLs, and deletes the Pod for good.

Deliberately simpler than a kubelet: one process per Pod (Pods with one container and no init
containers), probes every `probe_period` seconds whatever the spec says, no liveness probe, no
`$(VAR)` expansion, no volumes, no resource limits, no taints or affinity (a nodeSelector is
honoured), restartPolicy Always with a short back-off (0.5 s doubling to 10 s). The container's
ports are the host's: the agent gives each Pod its own free port for `port_env` (the worker's health
port) and maps the container port to it for the readiness probe.

Threads: one per watched scope (list, then watch from the list's resourceVersion; re-list when the
watch expires) feeding a queue, and one that reconciles every Pod it holds. No call blocks another
Pod's handling: a terminating Pod is polled, not waited on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kompressor_operator.workerprocs import WorkerProcess, WorkerProcesses
from testbed import KubeAPI
from testbed.process import free_port

log = logging.getLogger("kompressor.nodeagent")

NODE_NAME = "kompressor-node-1"
HOST_IP = "127.0.0.1"
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


class Event(NamedTuple):
    """One thing the agent did: `at` is time.monotonic(), `pod` is "namespace/name"."""

    at: float
    pod: str
    action: str


class PodProcesses(WorkerProcesses):
    """WorkerProcesses whose children see the host's environment without its KOMPRESSOR_* variables,
    plus exactly what the Pod gives them: a setting the test process happens to have cannot leak into
    a "container". Each process logs to `<log_dir>/<namespace>_<pod>-<n>.log` when `log_name` is given."""

    def base_environment(self) -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if not key.startswith("KOMPRESSOR_")}


class ConfigError(Exception):
    """The container's configuration cannot be built yet (a Secret or key is missing)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(pod: Mapping[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def _exit_code(process: subprocess.Popen) -> int:
    """The container runtime's convention: killed by signal N is 128 + N."""
    code = process.returncode
    return 128 - code if code is not None and code < 0 else int(code or 0)


def _kill_group(pid: int) -> None:
    # The pool's forkserver and its children share the worker's session: none may outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def default_accepts(pod: Mapping[str, Any]) -> bool:
    """Pods the agent can run: one container, no init containers, the default scheduler."""
    spec = pod.get("spec", {})
    return (
        len(spec.get("containers", [])) == 1
        and not spec.get("initContainers")
        and spec.get("schedulerName", "default-scheduler") == "default-scheduler"
    )


@dataclass
class _Pod:
    """What the agent knows of one Pod (keyed by uid) and of the process that is its container."""

    pod: dict[str, Any]
    bound: bool = False
    process: WorkerProcess | None = None
    restart_count: int = 0
    start_time: str | None = None
    started_at: str | None = None
    alive_since: float = 0.0
    ready: bool = False
    probe_failures: int = 0
    next_probe: float = 0.0
    port_map: dict[int, int] = field(default_factory=dict)
    config_error: str | None = None
    terminated: dict[str, Any] | None = None
    last_state: dict[str, Any] = field(default_factory=dict)
    next_attempt: float = 0.0
    sigterm_at: float | None = None
    kill_deadline: float | None = None
    killed: bool = False
    exit_recorded: bool = False
    status_dirty: bool = False
    done: bool = False

    @property
    def key(self) -> str:
        return _key(self.pod)

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]

    @property
    def container(self) -> dict[str, Any]:
        return self.pod["spec"]["containers"][0]

    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def grace_seconds(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


class NodeAgent:
    """Plays the kubelet for one Node: binds, runs, reports and terminates Pods (see the module doc).

    agent = NodeAgent(kube, log_dir=tmp_path / "pods", namespaces=[ns])
    with agent:                      # start(): registers the Node, starts watching
        ...                          # agent.events, agent.running_pods(), agent.process_of("ns/pod")
    # stop(): SIGTERM every process, SIGKILL after `stop_timeout`, stop watching

    - `runner`: a WorkerProcesses-compatible object (`start_one(extra_env)`, `terminate`, `kill`,
      `reap`); by default a `PodProcesses` logging under `log_dir`.
    - `env_overrides`: set in every container's environment after the Pod's own.
    - `port_env`: the variable holding the container's health port; when the Pod sets it to a port P
      (and `env_overrides` does not set it), the Pod gets a free host port H instead and the readiness
      probe's port P goes to H. Without a usable probe, a container is ready once it has been alive
      `ready_after` seconds.
    - `namespaces`: watch only these (default: every namespace); `accepts(pod)`: which Pods to bind.
    """

    def __init__(
        self,
        kube: KubeAPI,
        runner: WorkerProcesses | None = None,
        *,
        log_dir: Path | None = None,
        node_name: str = NODE_NAME,
        namespaces: Iterable[str] | None = None,
        env_overrides: Mapping[str, str] | None = None,
        port_env: str | None = "KOMPRESSOR_HEALTH_PORT",
        accepts: Callable[[Mapping[str, Any]], bool] = default_accepts,
        probe_period: float = 0.5,
        ready_after: float = 1.0,
        config_retry: float = 1.0,
        restart_backoff: float = 0.5,
        stop_timeout: float = 10.0,
        heartbeat_seconds: float = 20.0,
        watch_timeout_seconds: int = 60,
    ) -> None:
        if runner is None:
            if log_dir is None:
                raise ValueError("give a runner or a log_dir to build one")
            runner = PodProcesses(env={}, log_dir=Path(log_dir), grace_seconds=math.inf)
        self.kube = kube
        self.runner = runner
        self.node_name = node_name
        self.namespaces = sorted(set(namespaces)) if namespaces is not None else None
        self.env_overrides = dict(env_overrides or {})
        self.port_env = port_env
        self.accepts = accepts
        self.probe_period = probe_period
        self.ready_after = ready_after
        self.config_retry = config_retry
        self.restart_backoff = restart_backoff
        self.stop_timeout = stop_timeout
        self.heartbeat_seconds = heartbeat_seconds
        self.watch_timeout_seconds = watch_timeout_seconds

        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._pods: dict[str, _Pod] = {}
        self._queue: queue.Queue[tuple[str, Any, str | None]] = queue.Queue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_responses: set[Any] = set()
        self._api: client.ApiClient | None = None
        self._core: client.CoreV1Api
        self._node_labels: dict[str, str] = {}
        self._next_heartbeat = 0.0
        self._node_since = _now()
        self.errors: list[str] = []
        """Unexpected exceptions the agent's threads survived (a test may assert there are none)."""

    # --- public -----------------------------------------------------------------------------------

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> NodeAgent:
        """Register the Node and start watching; an agent stopped before may start again (it adopts
        the Pods still bound to its Node and runs them anew, as a restarted kubelet would)."""
        if any(thread.is_alive() for thread in self._threads):
            raise RuntimeError("the node agent is running already")
        self._stopping.clear()
        self._threads = []
        with self._lock:
            self._pods.clear()
        self._queue = queue.Queue()
        self._api = config.new_client_from_config(config_file=str(self.kube.kubeconfig_path))
        self._core = client.CoreV1Api(self._api)
        self._register_node()
        scopes: list[str | None] = list(self.namespaces) if self.namespaces is not None else [None]
        for scope in scopes:
            self._spawn(f"nodeagent-watch-{scope or 'all'}", self._watch_loop, scope)
        self._spawn("nodeagent-sync", self._sync_loop)
        return self

    def stop(self) -> None:
        """Stop watching and reconciling, then SIGTERM every process and SIGKILL what outlives
        `stop_timeout`. The Pods stay in the API as they are (a stopped kubelet deletes nothing)."""
        self._stopping.set()
        with self._lock:
            responses = list(self._watch_responses)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            records = [record for record in self._pods.values() if record.process is not None]
        for record in records:
            if record.alive():
                self.runner.terminate(record.process)
                self._record(record.key, "sigterm")
        deadline = time.monotonic() + self.stop_timeout
        for record in records:
            assert record.process is not None
            try:
                record.process.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._record(record.key, "sigkill")
            _kill_group(record.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                record.process.process.wait(5)
            if not record.exit_recorded:
                record.exit_recorded = True
                self._record(record.key, f"exited {_exit_code(record.process.process)}")
        with contextlib.suppress(Exception):
            self.runner.reap()
        if self._api is not None:
            self._api.close()
            self._api = None

    def running_pods(self) -> list[str]:
        """The "namespace/name" of every Pod whose process is alive now."""
        with self._lock:
            return sorted(record.key for record in self._pods.values() if record.alive())

    def process_of(self, pod: str) -> WorkerProcess | None:
        """The live process of Pod "namespace/name", if it has one."""
        with self._lock:
            for record in self._pods.values():
                if record.key == pod and record.alive():
                    return record.process
        return None

    def host_ports(self, pod: str) -> dict[int, int]:
        """Container port -> the host port the agent gave it, of Pod "namespace/name" while it runs."""
        with self._lock:
            for record in self._pods.values():
                if record.key == pod and record.alive():
                    return dict(record.port_map)
        return {}

    def actions(self, pod: str) -> list[str]:
        """What the agent did to Pod "namespace/name", in order."""
        with self._lock:
            return [event.action for event in self.events if event.pod == pod]

    # --- plumbing ---------------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _record(self, pod: str, action: str) -> None:
        log.info("%s: %s", pod, action)
        with self._lock:
            self.events.append(Event(time.monotonic(), pod, action))

    def _error(self, what: str) -> None:
        log.exception("node agent: %s", what)
        with self._lock:
            self.errors.append(what)

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return json.loads(response.data)

    # --- the Node ---------------------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        now = _now()
        since = self._node_since
        resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": since,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "enough memory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs"),
                condition(
                    "Ready", "True", "KubeletReady", "the kompressor node agent is posting ready status"
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "kompressor node agent",
                "containerRuntimeVersion": "kompressor-worker://local",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            "status": self._node_status(),
        }
        try:
            self._core.create_node(body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Create may drop status (and an existing Node's is stale): post it through the subresource.
        self._heartbeat()
        node = self._json(self._core.read_node(self.node_name, _preload_content=False))
        self._node_labels = node["metadata"].get("labels") or {}
        # The API server's TaintNodesByCondition admission taints a new Node not-ready; the node
        # lifecycle controller, which would lift it once the Node reports Ready, does not run here.
        taints = node["spec"].get("taints") or []
        kept = [t for t in taints if t.get("key") not in NOT_READY_TAINTS]
        if kept != taints:
            self._core.patch_node(self.node_name, {"spec": {"taints": kept}}, _preload_content=False)

    def _heartbeat(self) -> None:
        self._core.patch_node_status(self.node_name, {"status": self._node_status()}, _preload_content=False)
        self._next_heartbeat = time.monotonic() + self.heartbeat_seconds

    # --- watching ---------------------------------------------------------------------------------

    def _list(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        if namespace is None:
            response = self._core.list_pod_for_all_namespaces(_preload_content=False)
        else:
            response = self._core.list_namespaced_pod(namespace, _preload_content=False)
        body = self._json(response)
        return body.get("items") or [], body["metadata"]["resourceVersion"]

    def _watch_loop(self, namespace: str | None) -> None:
        """List, then watch from the list's resourceVersion; re-list when the watch expires (410) or
        fails. Every event goes to the sync thread's queue."""
        api = config.new_client_from_config(config_file=str(self.kube.kubeconfig_path))
        core = client.CoreV1Api(api)
        version: str | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if version is None:
                        pods, version = self._list(namespace)
                        self._queue.put(("SYNC", pods, namespace))
                    version = self._watch_once(core, namespace, version)
                except Exception as exc:
                    if self._stopping.is_set():
                        break
                    log.warning("pod watch (%s) failed, re-listing: %s", namespace or "all", exc)
                    version = None
                    self._stopping.wait(1.0)
        finally:
            api.close()

    def _watch_once(self, core: client.CoreV1Api, namespace: str | None, version: str) -> str | None:
        """One watch request; the resourceVersion to resume from, or None to re-list."""
        kwargs = {
            "watch": True,
            "resource_version": version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.watch_timeout_seconds,
            "_preload_content": False,
            "_request_timeout": (10, self.watch_timeout_seconds + 30),
        }
        if namespace is None:
            response = core.list_pod_for_all_namespaces(**kwargs)
        else:
            response = core.list_namespaced_pod(namespace, **kwargs)
        with self._lock:
            self._watch_responses.add(response)
        try:
            if response.status != 200:  # with _preload_content=False the client does not check
                raise ApiException(http_resp=response)
            if self._stopping.is_set():
                return version
            for line in iter_resp_lines(response):
                if not line or not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:  # too old: the watch expired
                        return None
                    raise RuntimeError(f"watch error: {obj.get('reason')}: {obj.get('message')}")
                version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._queue.put((kind, obj, namespace))
                if self._stopping.is_set():
                    break
            return version
        finally:
            with self._lock:
                self._watch_responses.discard(response)
            response.release_conn()

    # --- reconciling ------------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                kind, obj, scope = self._queue.get(timeout=0.2)
            except queue.Empty:
                kind = None
            try:
                if kind == "SYNC":
                    self._resync(obj, scope)
                elif kind is not None:
                    self._observe(kind, obj)
                while True:  # drain what queued up before reconciling
                    try:
                        kind, obj, scope = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "SYNC":
                        self._resync(obj, scope)
                    else:
                        self._observe(kind, obj)
                if time.monotonic() >= self._next_heartbeat:
                    self._heartbeat()
                self.runner.reap()
                for record in list(self._pods.values()):
                    if self._stopping.is_set():
                        break
                    try:
                        self._reconcile(record)
                    except Exception:
                        self._error(f"reconciling {record.key}")
                        record.next_attempt = time.monotonic() + 1.0
            except Exception:
                self._error("sync loop")
                self._stopping.wait(0.5)

    def _mine(self, pod: Mapping[str, Any]) -> bool:
        """Bound to this node, or Pending, unbound and runnable here."""
        spec, status = pod.get("spec", {}), pod.get("status", {})
        node = spec.get("nodeName")
        if node:
            return node == self.node_name and status.get("phase") not in ("Succeeded", "Failed")
        if pod["metadata"].get("deletionTimestamp") or status.get("phase", "Pending") != "Pending":
            return False
        selector = spec.get("nodeSelector") or {}
        if any(self._node_labels.get(key) != value for key, value in selector.items()):
            return False
        return self.accepts(pod)

    def _resync(self, pods: list[dict[str, Any]], scope: str | None) -> None:
        """A fresh list: what the agent holds but the list lacks was deleted meanwhile."""
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self._observe("MODIFIED", pod)
        for uid, record in list(self._pods.items()):
            in_scope = scope is None or record.pod["metadata"]["namespace"] == scope
            if in_scope and uid not in seen:
                self._observe("DELETED", record.pod)

    def _observe(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        record = self._pods.get(uid)
        if kind == "DELETED":
            if record is not None:
                self._forget(record, "removed")
            return
        if record is None:
            if not self._mine(pod):
                return
            record = _Pod(pod=pod, bound=bool(pod["spec"].get("nodeName")))
            self._adopt_status(record)
            with self._lock:
                self._pods[uid] = record
            return
        if pod["spec"].get("nodeName") not in (None, self.node_name):
            self._forget(record, "bound elsewhere")  # another scheduler won the race
            return
        if pod["spec"].get("nodeName") == self.node_name and not record.bound:
            record.bound = True  # bound by an earlier attempt whose answer was lost
            record.start_time = record.start_time or _now()
        if not record.bound or pod["spec"].get("nodeName"):
            record.pod = pod
        else:  # our binding is not in this (older) event yet: keep our nodeName
            record.pod = {**pod, "spec": {**pod["spec"], "nodeName": self.node_name}}

    def _adopt_status(self, record: _Pod) -> None:
        """A Pod another agent ran (the test bed outlives agents): keep counting its restarts."""
        for status in record.pod.get("status", {}).get("containerStatuses") or []:
            record.restart_count = int(status.get("restartCount", 0))
        record.start_time = record.pod.get("status", {}).get("startTime")

    def _forget(self, record: _Pod, why: str) -> None:
        """The Pod left the API (or this node): its process goes, without grace, as a kubelet's would."""
        if record.alive():
            assert record.process is not None
            self.runner.kill(record.process)
            self._record(record.key, "sigkill")
        if record.process is not None:
            _kill_group(record.process.pid)
        with self._lock:
            self._pods.pop(record.uid, None)
        if not record.done:
            self._record(record.key, why)

    def _reconcile(self, record: _Pod) -> None:
        now = time.monotonic()
        if record.done or now < record.next_attempt:
            return
        if not record.bound:
            if record.deleting():
                return  # the API server deletes an unbound Pod at once
            self._bind(record)
            return
        if record.deleting():
            self._terminate(record, now)
            return
        if record.process is None:
            self._start(record, now)
        elif not record.process.alive():
            self._crashed(record, now)
        else:
            self._probe(record, now)
        if record.status_dirty:
            self._patch_status(record)

    def _bind(self, record: _Pod) -> None:
        meta = record.pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            # The response is a Status, not a Binding: deserializing it fails (kubernetes-client#547).
            self._core.create_namespaced_binding(meta["namespace"], body, _preload_content=False)
        except ApiException as exc:
            if exc.status in (404, 409):  # gone, or bound by someone else: the watch tells which
                record.next_attempt = time.monotonic() + 1.0
                log.info("%s: binding refused (%s)", record.key, exc.status)
                return
            raise
        record.bound = True
        record.pod = {**record.pod, "spec": {**record.pod["spec"], "nodeName": self.node_name}}
        record.start_time = record.start_time or _now()
        self._record(record.key, "bound")

    # --- the container's environment --------------------------------------------------------------

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read = (
            self._core.read_namespaced_secret if kind == "Secret" else self._core.read_namespaced_config_map
        )
        try:
            return self._json(read(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _source(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str] | None:
        """A Secret's (decoded) or ConfigMap's data; None when it is missing and optional."""
        obj = self._read(kind, namespace, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        if kind == "Secret":
            return {
                key: base64.b64decode(value).decode(errors="replace")
                for key, value in (obj.get("data") or {}).items()
            }
        return dict(obj.get("data") or {})

    def _key_ref(self, kind: str, ref: Mapping[str, Any], namespace: str) -> str | None:
        name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional"))
        data = self._source(kind, namespace, name, optional)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")
        return data[key]

    def _field_ref(self, record: _Pod, path: str) -> str:
        meta, spec = record.pod["metadata"], record.pod["spec"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.hostIP": HOST_IP,
            "status.podIP": HOST_IP,
        }
        if path in simple:
            return simple[path]
        for prefix, values in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return (meta.get(values) or {}).get(path[len(prefix) + 2 : -2], "")
        raise ConfigError(f"unsupported fieldRef {path}")

    def _resolve_env(self, record: _Pod) -> dict[str, str]:
        """The container's environment as a kubelet builds it: envFrom, then env (which wins)."""
        namespace = record.pod["metadata"]["namespace"]
        container = record.container
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref in (("Secret", source.get("secretRef")), ("ConfigMap", source.get("configMapRef"))):
                if ref:
                    data = self._source(kind, namespace, ref.get("name", ""), bool(ref.get("optional")))
                    env.update({prefix + key: value for key, value in (data or {}).items()})
        for var in container.get("env") or []:
            name, source = var["name"], var.get("valueFrom")
            if source is None:
                env[name] = var.get("value", "")
            elif "secretKeyRef" in source:
                value = self._key_ref("Secret", source["secretKeyRef"], namespace)
                if value is not None:
                    env[name] = value
            elif "configMapKeyRef" in source:
                value = self._key_ref("ConfigMap", source["configMapKeyRef"], namespace)
                if value is not None:
                    env[name] = value
            elif "fieldRef" in source:
                env[name] = self._field_ref(record, source["fieldRef"]["fieldPath"])
            else:
                raise ConfigError(f"unsupported valueFrom for {name}: {sorted(source)}")
        return env

    # --- running ----------------------------------------------------------------------------------

    def _start(self, record: _Pod, now: float) -> None:
        try:
            env = self._resolve_env(record)
        except ConfigError as exc:
            message = str(exc)
            if message != record.config_error:
                record.config_error = message
                record.status_dirty = True
                self._record(record.key, f"CreateContainerConfigError: {message}")
            record.next_attempt = now + self.config_retry
            return
        record.config_error = None
        record.port_map = {}
        if self.port_env and self.port_env not in self.env_overrides:
            port = int(env.get(self.port_env) or 0)
            if port:
                record.port_map[port] = free_port()
                env[self.port_env] = str(record.port_map[port])
        env.update(self.env_overrides)
        name = f"{record.pod['metadata']['namespace']}_{record.pod['metadata']['name']}"
        if isinstance(self.runner, PodProcesses):
            process = self.runner.start_one(env, log_name=name)
        else:
            process = self.runner.start_one(env)
        with self._lock:
            record.process = process
        record.started_at = _now()
        record.start_time = record.start_time or record.started_at
        record.alive_since = now
        record.ready = False
        record.probe_failures = 0
        record.next_probe = now
        record.terminated = None
        record.exit_recorded = False
        record.status_dirty = True
        log.info("%s: pid %d, log %s", record.key, process.pid, process.log)
        self._record(record.key, "started")

    def _readiness_target(self, record: _Pod) -> tuple[str, int, float, int] | None:
        """(path, host port, timeout, failureThreshold) of the readiness probe, if it can be run."""
        probe = record.container.get("readinessProbe") or {}
        http = probe.get("httpGet")
        if not http:
            return None
        port = http.get("port")
        if isinstance(port, str) and not port.isdigit():
            named = [p for p in record.container.get("ports") or [] if p.get("name") == port]
            if not named:
                return None
            port = named[0]["containerPort"]
        host_port = record.port_map.get(int(port))
        if host_port is None:
            return None
        timeout = min(float(probe.get("timeoutSeconds", 1)), 1.0)
        return http.get("path", "/"), host_port, timeout, int(probe.get("failureThreshold", 3))

    def _probe(self, record: _Pod, now: float) -> None:
        if now < record.next_probe:
            return
        record.next_probe = now + self.probe_period
        target = self._readiness_target(record)
        if target is None:
            ok, threshold = now - record.alive_since >= self.ready_after, 1
        else:
            path, port, timeout, threshold = target
            try:
                with urllib.request.urlopen(f"http://{HOST_IP}:{port}{path}", timeout=timeout) as reply:
                    ok = 200 <= reply.status < 400
            except (urllib.error.URLError, OSError, ValueError):
                ok = False
        if ok:
            record.probe_failures = 0
            if not record.ready:
                record.ready = True
                record.status_dirty = True
                self._record(record.key, "ready")
        else:
            record.probe_failures += 1
            if record.ready and record.probe_failures >= threshold:
                record.ready = False
                record.status_dirty = True
                self._record(record.key, "unready")

    def _finished(self, record: _Pod) -> dict[str, Any]:
        """The terminated state of the process that just exited (recorded once)."""
        assert record.process is not None
        code = _exit_code(record.process.process)
        _kill_group(record.process.pid)
        if not record.exit_recorded:
            record.exit_recorded = True
            self._record(record.key, f"exited {code}")
        return {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": record.started_at,
            "finishedAt": _now(),
            "containerID": f"kompressor://{record.process.pid}",
        }

    def _crashed(self, record: _Pod, now: float) -> None:
        """Exited on its own: report it terminated, count the restart, start it again after a back-off
        (restartPolicy Always; OnFailure and Never are not supported)."""
        record.terminated = self._finished(record)
        record.last_state = {"terminated": record.terminated}
        record.restart_count += 1
        record.ready = False
        with self._lock:
            record.process = None
        record.status_dirty = True
        record.next_attempt = now + min(self.restart_backoff * 2 ** (record.restart_count - 1), 10.0)

    def _terminate(self, record: _Pod, now: float) -> None:
        """The Pod is being deleted: SIGTERM, SIGKILL after its grace period, then delete it for good."""
        if record.alive():
            assert record.process is not None
            if record.sigterm_at is None:
                self.runner.terminate(record.process)
                record.sigterm_at = now
                record.kill_deadline = now + record.grace_seconds()
                log.info("%s: grace period %gs", record.key, record.grace_seconds())
                self._record(record.key, "sigterm")
            elif not record.killed and record.kill_deadline is not None and now >= record.kill_deadline:
                _kill_group(record.process.pid)
                record.killed = True
                self._record(record.key, "sigkill")
            return
        if record.process is not None:
            terminated = self._finished(record)
            record.ready = False
            record.terminated = terminated
            record.status_dirty = True
            self._patch_status(record)
        try:
            self._core.delete_namespaced_pod(
                record.pod["metadata"]["name"],
                record.pod["metadata"]["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": record.uid}},
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a new Pod by the same name
                raise
        record.done = True
        self._record(record.key, "deleted")

    # --- status -----------------------------------------------------------------------------------

    def _status(self, record: _Pod) -> dict[str, Any]:
        container = record.container
        now = _now()
        running = record.alive()
        state: dict[str, Any]
        if record.config_error is not None:
            state = {"waiting": {"reason": "CreateContainerConfigError", "message": record.config_error}}
        elif running:
            state = {"running": {"startedAt": record.started_at}}
        elif record.terminated is not None:
            state = {"terminated": record.terminated}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        ready = running and record.ready
        status = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": running,
            "restartCount": record.restart_count,
            "state": state,
            "lastState": record.last_state if running else {},
        }
        if record.process is not None:
            status["containerID"] = f"kompressor://{record.process.pid}"
        not_ready = {
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: [{container['name']}]",
        }

        def condition(kind: str, true: bool, why: Mapping[str, str] | None = None) -> dict[str, Any]:
            found = {c["type"]: c for c in record.pod.get("status", {}).get("conditions") or []}
            value = "True" if true else "False"
            old = found.get(kind)
            since = old["lastTransitionTime"] if old and old.get("status") == value else now
            return {
                "type": kind,
                "status": value,
                "lastProbeTime": None,
                "lastTransitionTime": since,
                **(why or {}),
            }

        started = record.started_at is not None
        return {
            "phase": "Running" if started else "Pending",
            "hostIP": HOST_IP,
            "podIP": HOST_IP if started else None,
            "podIPs": [{"ip": HOST_IP}] if started else None,
            "startTime": record.start_time or now,
            "conditions": [
                condition("Initialized", True),
                condition("Ready", ready, None if ready else not_ready),
                condition("ContainersReady", ready, None if ready else not_ready),
                condition("PodScheduled", True),
            ],
            "containerStatuses": [status],
        }

    def _patch_status(self, record: _Pod) -> None:
        meta = record.pod["metadata"]
        try:
            response = self._core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": self._status(record)}, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                record.status_dirty = False  # gone: the watch's DELETED event ends it
                return
            raise
        pod = self._json(response)
        if pod["metadata"]["uid"] == record.uid:
            record.pod = pod
        record.status_dirty = False
