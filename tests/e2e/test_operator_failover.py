"""Two operators with leader election (kopf peering) on the real API server: the standby takes over.

The chart with operator.replicas 2 runs kopf with --peering=<release>: both replicas keep a record in
one ClusterKopfPeering, the older one leads and the other pauses. Killing the leader with SIGKILL
mid-job (no goodbye in the peering object) leaves the standby waiting out the dead record's lifetime
(handlers.PEERING_LIFETIME_SECONDS), then resuming the job from its ledger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.process import free_port, wait_until
from tests.e2e.cluster import Cluster, install, job_manifest, step_runs
from tests.e2e.test_operator import _manifest_ids, _photos_bucket

pytestmark = pytest.mark.kube

NAMESPACE = "failover"
PEERING = "kompressor"  # the release name: the chart's --peering=<fullname>
TAKEOVER_LIMIT_SECONDS = 30.0
RESUMED = "Resuming operations after the pause"  # kopf's log line when an operator starts to act


@pytest.fixture(scope="module")
def cluster(kube: KubeAPI, rabbitmq: RabbitMQ, s3: S3Server, tmp_path_factory) -> Iterator[Cluster]:
    installed = install(
        kube, rabbitmq, s3, tmp_path_factory.mktemp("failover"), NAMESPACE, {"operator": {"replicas": 2}}
    )
    installed.agent.start()
    try:
        yield installed
    finally:
        installed.agent.stop()
        installed.webhook.stop()


def _peers(cluster: Cluster) -> dict[str, dict]:
    result = cluster.kube.kubectl("get", "clusterkopfpeering", PEERING, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    return json.loads(result.stdout).get("status") or {}


def _log(cluster: Cluster, name: str) -> str:
    return (cluster.log_dir / f"{name}.log").read_text(errors="replace")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_the_standby_takes_over_a_killed_leader_within_30_s_with_exact_counts(cluster: Cluster, s3: S3Server):
    leader = cluster.spawn_operator(f"--peering={PEERING}", log_name="leader", metrics_port=free_port())
    standby = None
    try:
        # The leader's record first, so the standby is the younger (lower priority) one.
        wait_until(lambda: len(_peers(cluster)) == 1, 60, "the leader's peering record")
        standby_metrics = free_port()
        standby = cluster.spawn_operator(
            f"--peering={PEERING}", log_name="standby", metrics_port=standby_metrics
        )
        wait_until(lambda: len(_peers(cluster)) == 2, 60, "the standby's peering record")
        # kopf starts paused when peering, and resumes once no peer outranks it: only the leader does.
        wait_until(lambda: RESUMED in _log(cluster, "leader"), 60, "the leader to run")
        peers = _peers(cluster)
        leader_id = max(peers, key=lambda identity: peers[identity]["priority"])

        total = 40
        bucket = _photos_bucket(s3, total)
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=job_manifest("failover", bucket, s3, output={"format": "avif", "quality": 45}),
        )
        wait_until(lambda: cluster.job_status("failover").get("succeeded", 0) >= 4, 180, "some progress")
        before_kill = _log(cluster, "standby")
        # the standby did nothing while the leader ran
        assert RESUMED not in before_kill and step_runs(standby_metrics, NAMESPACE, "failover") == 0
        _kill(leader)
        killed = time.monotonic()
        done_at_kill = cluster.job_status("failover").get("succeeded", 0)
        wait_until(
            lambda: step_runs(standby_metrics, NAMESPACE, "failover") > 0, 120, "the standby to step the job"
        )
        takeover = time.monotonic() - killed
        print(f"takeover: {takeover:.1f} s after SIGKILL of the leader ({leader_id})")
        assert takeover < TAKEOVER_LIMIT_SECONDS

        status = cluster.wait_phase("failover", {"Succeeded", "Failed"}, 300)
        assert done_at_kill < total
        assert (status["phase"], status["total"], status["succeeded"], status["failed"]) == (
            "Succeeded",
            total,
            total,
            0,
        )
        assert _manifest_ids(s3, status["manifest"]) == list(range(total))  # each input once
        assert leader_id not in _peers(cluster)  # the dead leader's record was cleaned up
    finally:
        _kill(leader)
        if standby is not None:
            standby.send_signal(signal.SIGTERM)
            try:
                standby.wait(20)
            except subprocess.TimeoutExpired:
                _kill(standby)
