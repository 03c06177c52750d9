"""The controller's own rule about threads: kopf runs a job's step timer and its delete handler in
different threads, and the job's engine holds one pika connection, which is not thread-safe."""

from __future__ import annotations

import threading

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef
from kompressor_operator.controller import Controller, _Job
from kompressor_operator.metrics import OperatorMetrics
from kompressor_operator.settings import OperatorSettings

JOB = JobRef(namespace="shop", name="catalog", uid="0f3c2a9e-1111-2222-3333-444455556666")
SPEC = CompressionJobSpec.model_validate(
    {"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}}
)


class _Engine:
    """Records the calls the delete handler makes on a job's engine, in order."""

    def __init__(self, calls: list[str]):
        self.calls = calls

    def delete_queues(self) -> None:
        self.calls.append("delete_queues")

    def close(self) -> None:
        self.calls.append("close")


def test_a_jobs_deletion_waits_for_its_running_step_to_end():
    calls: list[str] = []
    controller = Controller(OperatorSettings(), kube=None, metrics=OperatorMetrics())
    state = _Job(JOB, SPEC, _Engine(calls), 0.0)
    controller.jobs[JOB.uid] = state
    body = {"metadata": {"uid": JOB.uid, "namespace": JOB.namespace, "name": JOB.name}}
    state.busy.acquire()  # a step is running on the engine
    deleting = threading.Thread(target=controller.delete, args=(body,))
    deleting.start()
    deleting.join(0.5)
    assert deleting.is_alive() and calls == []  # it waits; before, it used the engine at once
    calls.append("step ended")
    state.busy.release()
    deleting.join(10)
    assert not deleting.is_alive()
    assert calls == ["step ended", "delete_queues", "close"]


def test_the_workers_jobs_recorded_are_booked_once_before_any_job_decides():
    controller = Controller(OperatorSettings(max_total_workers=4), kube=None, metrics=OperatorMetrics())
    controller.seed({"a": 2, "b": 1, "finished": 0})
    assert controller.book.held() == 3
    with controller.book.deciding() as budget:
        assert dict(budget.held) == {"a": 2, "b": 1, "finished": 0}
    controller.seed({"a": 4, "c": 4})  # a later job's start: the book is the truth by now
    assert controller.book.held() == 3
