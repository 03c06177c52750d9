"""The finish webhook against real receivers on 127.0.0.1 (the only address these tests allow-list):
hostile ones that drip, babble or fail, and one that fails twice before it accepts.

The receivers are raw TCP servers (tests/webhooks.py). The Controller tests start from what the
finish step stores (the finished status with a pending Notified condition) and tick the
Controller's step as kopf's timer does, writing back each status. The last tests follow a finished
job after its webhook: its workers seen gone, then its TTL.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes
import pytest
import yaml

from kompressor.addresses import AddressPolicy
from kompressor.crd import API_VERSION, GROUP, KIND, PLURAL, CompressionJobStatus, Condition, Phase, crd
from kompressor.messages import JobRef
from kompressor_operator import notify
from kompressor_operator.controller import Controller, Event
from kompressor_operator.kube import Kube
from kompressor_operator.metrics import OperatorMetrics
from kompressor_operator.reconcile import needs_steps
from kompressor_operator.settings import OperatorSettings
from kompressor_operator.status import NOTIFIED, WEBHOOK_PENDING, noted
from testbed import KubeAPI, RabbitMQ, S3Server
from testbed.process import wait_until
from tests.webhooks import Answer, Receiver, answers, drip, garbage, over_long_line, verified

LOOPBACK = AddressPolicy.allowing("127.0.0.1/32")
KEY = b"a key of the receiver's"
JOB = JobRef(namespace="shop", name="catalog", uid="7f0c5a52-6c1e-4d8e-9b1a-0e6f3c2d9a41")


@pytest.fixture
def receiver(request) -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(*answers: Answer) -> Receiver:
        started.append(Receiver(*answers))
        return started[-1]

    yield start
    for one in started:
        one.stop()


# --- one attempt ------------------------------------------------------------------------------------


def _attempt(url: str, timeout: float = 1.0, key: bytes | None = KEY) -> tuple[notify.Attempt, float]:
    started = time.monotonic()
    result = notify.attempt(url, b'{"job": 1}', "finished-x", key, LOOPBACK, timeout)
    return result, time.monotonic() - started


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline(receiver):
    result, seconds = _attempt(receiver(drip).url, timeout=1.0)
    assert result == notify.Attempt("webhook did not answer within 1 s", retry=True)
    assert 1.0 <= seconds < 1.5, seconds


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (garbage, "webhook answered malformed HTTP: BadStatusLine"),
        (over_long_line, "webhook answered malformed HTTP: LineTooLong"),
        (answers(500), "webhook answered HTTP 500"),
        (answers(429), "webhook answered HTTP 429"),
    ],
)
def test_a_malformed_or_failing_answer_is_an_error_worth_retrying(receiver, answer, error):
    result, seconds = _attempt(receiver(answer).url)
    assert result.retry and result.error is not None and result.error.startswith(error), result
    assert seconds < 1.0


@pytest.mark.parametrize("status", [302, 400, 404])
def test_other_answers_fail_at_once(receiver, status):
    assert _attempt(receiver(answers(status)).url)[0] == notify.Attempt(f"webhook answered HTTP {status}")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1:8080/a b", "webhook URL cannot be requested: InvalidURL"),
        ("http://127.0.0.1:99999/", "webhook URL cannot be requested: ValueError: Port out of range"),
        ("http://" + "a" * 64 + ".invalid/", "webhook URL cannot be requested: UnicodeError"),
        ("http://10.0.0.1/", "webhook address refused: 10.0.0.1 resolves to 10.0.0.1, a non-public address"),
    ],
)
def test_urls_that_cannot_be_requested_or_are_refused_fail_without_escaping(url, error):
    """No exception escapes, whatever the URL (older jobs were stored before the CRD refused these)."""
    result, _ = _attempt(url)
    assert not result.retry and result.error is not None and result.error.startswith(error), result


def test_a_delivery_is_signed_the_standard_webhooks_way(receiver):
    hook = receiver(answers(204))
    assert _attempt(hook.url)[0] == notify.Attempt()
    [(headers, body)] = hook.requests
    assert headers[":request-line"] == "POST /hooks/kompressor?team=web HTTP/1.1"
    assert verified(headers, body, KEY) == "finished-x"
    assert body == b'{"job": 1}'


def test_an_unsigned_delivery_is_sent_only_when_no_key_is_given(receiver):
    hook = receiver(answers(204))
    assert _attempt(hook.url, key=None)[0] == notify.Attempt()
    [(headers, _)] = hook.requests
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "finished-x" and abs(int(headers["webhook-timestamp"]) - time.time()) < 60


# --- through the Controller ---------------------------------------------------------------------------


def _controller(**settings: Any) -> Controller:
    """Its Kube adapter is called only to read a Secret named in the spec (the tests marked kube)."""
    config = OperatorSettings(webhook_allow_networks=["127.0.0.1/32"], **settings)
    return Controller(config, Kube(), OperatorMetrics())


def finished_job(url: str, secret_ref: str | None = None, job: JobRef = JOB) -> dict[str, Any]:
    """A job as the finish step leaves it: Succeeded, its webhook pending."""
    now = datetime.now(UTC)
    status = CompressionJobStatus(
        phase=Phase.succeeded,
        total=3,
        published=3,
        succeeded=3,
        progress="3/3",
        completion_time=now,
        conditions=noted([], WEBHOOK_PENDING, now),
        manifest="s3://web/.kompressor/catalog/manifest.jsonl",
    )
    hook = {"webhookURL": url} | ({"secretRef": secret_ref} if secret_ref else {})
    return {
        "metadata": job.model_dump() | {"creationTimestamp": now.isoformat()},
        "spec": {
            "source": {"s3": {"bucket": "raw"}},
            "destination": {"s3": {"bucket": "web"}},
            "notify": hook,
        },
        "status": status.model_dump(by_alias=True, mode="json"),
    }


def settle(controller: Controller, body: dict[str, Any], timeout: float) -> tuple[Condition, list[Event]]:
    """Tick the step as the 1 s timer would (faster) until the Notified condition is settled,
    writing back each status as the handler does; the condition and the Events posted."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = controller.step(body, poll_interval=1.0)
        if outcome is not None:
            events += outcome.events
            assert outcome.status is not None
            body["status"] = outcome.status.model_dump(by_alias=True, mode="json")
        condition = notified(body)
        if condition.status != "Unknown":
            return condition, events
        time.sleep(0.05)
    raise TimeoutError(f"the webhook did not settle within {timeout} s: {notified(body)}")


def notified(body: dict[str, Any]) -> Condition:
    status = CompressionJobStatus.model_validate(body["status"])
    return next(c for c in status.conditions if c.type == NOTIFIED)


def _still_finished(body: dict[str, Any]) -> None:
    status = CompressionJobStatus.model_validate(body["status"])
    assert (status.phase, status.succeeded, status.total) == (Phase.succeeded, 3, 3)
    assert status.completion_time is not None


def test_a_receiver_that_fails_twice_then_accepts_gets_exactly_one_accepted_delivery(receiver):
    hook = receiver(answers(500), answers(503), answers(204))
    controller = _controller()
    body = finished_job(hook.url)
    started = time.monotonic()
    condition, events = settle(controller, body, timeout=20)
    seconds = time.monotonic() - started

    assert (condition.status, condition.reason) == ("True", "WebhookDelivered")
    assert condition.message == "delivered on attempt 3"
    assert [e.reason for e in events] == ["WebhookDelivered"]
    assert len(hook.requests) == 3  # two refused, one accepted
    assert {headers["webhook-id"] for headers, _ in hook.requests} == {notify.delivery_id(JOB)}
    assert 3.0 <= seconds < 6.0, seconds  # waits of 1 s and 2 s between the attempts
    _still_finished(body)

    # Settled: later ticks send nothing, even one given a stale body that still says pending (the
    # watch can lag behind the status just written).
    stale = finished_job(hook.url)
    for current in (stale, body):
        assert controller.step(current, poll_interval=1.0) is None
    assert len(hook.requests) == 3


def test_unsigned_when_no_secret_is_named(receiver):
    hook = receiver(answers(200))
    condition, _ = settle(_controller(), finished_job(hook.url), timeout=10)
    assert condition.status == "True"
    summary = json.loads(hook.requests[0][1])
    assert summary["job"]["uid"] == JOB.uid and summary["status"]["succeeded"] == 3


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (drip, "webhook did not answer within 0.5 s"),
        (garbage, "webhook answered malformed HTTP: BadStatusLine"),
        (over_long_line, "webhook answered malformed HTTP: LineTooLong"),
        (answers(500), "webhook answered HTTP 500"),
    ],
    ids=["slow-drip", "garbage-status-line", "over-long-line", "500s"],
)
def test_a_hostile_receiver_ends_as_webhook_failed_with_the_job_finished(receiver, answer, error):
    hook = receiver(answer)
    controller = _controller(webhook_attempts=2, webhook_timeout_seconds=0.5)
    body = finished_job(hook.url)
    started = time.monotonic()
    condition, events = settle(controller, body, timeout=15)
    seconds = time.monotonic() - started

    assert (condition.status, condition.reason) == ("False", "WebhookFailed")
    assert condition.message.startswith(f"attempt 2 of 2: {error}"), condition.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "WebhookFailed")]
    assert len(hook.requests) == 2
    assert seconds < 4.0, seconds  # two deadlines of 0.5 s and one wait of 1 s, at most
    _still_finished(body)


def test_the_name_lookup_is_inside_the_deadline(monkeypatch):
    """A resolver that never answers (getaddrinfo has no timeout of its own) costs the deadline."""
    never = threading.Event()

    def hanging_resolver(*args: Any, **kwargs: Any) -> list:
        never.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "the resolver gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_resolver)
    try:
        result, seconds = _attempt("http://hooks.example.com/x", timeout=0.5)
    finally:
        never.set()
    assert result == notify.Attempt("webhook did not answer within 0.5 s", retry=True)
    assert 0.5 <= seconds < 1.0, seconds


# --- the signing key, from a real Secret ------------------------------------------------------------

WHSEC = "whsec_" + base64.b64encode(b"32 bytes of a receiver's secret!").decode()


@pytest.fixture(scope="module")
def secrets(kube: KubeAPI) -> JobRef:
    """A namespace with the Secrets these tests name and the CRD; the Kube adapter pointed at the
    API server. The job it returns lives in that namespace."""
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd()))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{PLURAL}.{GROUP}")
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", namespace)
    made = {
        "hook-hmac": [f"hmacKey={WHSEC}"],
        "hook-empty": ["hmacKey="],
        "hook-other": ["x=y"],
        # The worker Secrets a job's namespace must hold before it starts (never read by these tests).
        "kompressor-broker": ["url=amqp://unused"],
        "kompressor-storage": ["accessKeyId=unused", "secretAccessKey=unused"],
    }
    for name, literals in made.items():
        args = [f"--from-literal={literal}" for literal in literals]
        kube.kubectl("create", "secret", "generic", name, "-n", namespace, *args)
    kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig_path))
    return JOB.model_copy(update={"namespace": namespace})


@pytest.mark.kube
def test_a_signed_delivery_verifies_and_keeps_its_id_across_retries(receiver, secrets: JobRef):
    hook = receiver(answers(502), answers(204))
    condition, _ = settle(_controller(), finished_job(hook.url, "hook-hmac", secrets), timeout=10)
    assert condition.status == "True"
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    ids = [verified(headers, body, key) for headers, body in hook.requests]
    assert ids == [notify.delivery_id(secrets)] * 2
    timestamps = [int(headers["webhook-timestamp"]) for headers, _ in hook.requests]
    assert timestamps[0] <= timestamps[1]  # each attempt signs its own time


@pytest.mark.kube
@pytest.mark.parametrize(
    ("secret", "named"),
    [
        ("hook-missing", "Secret {ns}/hook-missing does not exist"),
        ("hook-empty", "key hmacKey of Secret {ns}/hook-empty is empty"),
        ("hook-other", "Secret {ns}/hook-other has no key 'hmacKey'"),
    ],
)
def test_nothing_is_sent_unsigned_when_the_key_cannot_be_read(receiver, secrets: JobRef, secret, named):
    hook = receiver(answers(204))
    body = finished_job(hook.url, secret, secrets)
    condition, events = settle(_controller(), body, timeout=10)
    assert (condition.status, condition.reason) == ("False", "WebhookFailed")
    assert named.format(ns=secrets.namespace) in condition.message
    assert "nothing sent unsigned" in condition.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "WebhookFailed")]
    assert hook.requests == []
    _still_finished(body)


@pytest.mark.kube
def test_the_finish_step_stores_the_status_before_any_webhook_request(
    receiver, secrets: JobRef, kube: KubeAPI, rabbitmq: RabbitMQ, s3: S3Server, bucket: str
):
    """The whole operator path for a job with no inputs: start, step until finished, then deliver."""
    hook = receiver(garbage)
    job = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "finishing", "namespace": secrets.namespace},
        "spec": {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
            "storage": {"endpointURL": s3.endpoint_url},
            "notify": {"webhookURL": hook.url, "secretRef": "hook-hmac"},
        },
    }
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
    body = json.loads(
        kube.kubectl("get", "compjob", "finishing", "-n", secrets.namespace, "-o", "json").stdout
    )
    storage = {
        "endpoint_url": s3.endpoint_url,
        "access_key_id": s3.access_key,
        "secret_access_key": s3.secret_key,
    }
    controller = _controller(broker={"url": rabbitmq.url}, storage=storage, webhook_attempts=1)
    controller.start(body)
    try:
        finished: list[CompressionJobStatus] = []

        def step() -> bool:
            outcome = controller.step(body, poll_interval=0.0)
            if outcome is not None and outcome.status is not None:
                body["status"] = outcome.status.model_dump(by_alias=True, mode="json")
                finished.append(outcome.status)
            return bool(finished) and finished[-1].phase is Phase.succeeded

        wait_until(step, 30, "the job finished")
        assert notified(body).reason == "WebhookPending"
        assert hook.requests == []  # the finished status goes out first, then the webhook

        condition, events = settle(controller, body, timeout=10)
    finally:
        controller.delete(body)
    assert (condition.status, condition.reason) == ("False", "WebhookFailed")
    assert "BadStatusLine" in condition.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "WebhookFailed")]
    assert CompressionJobStatus.model_validate(body["status"]).phase is Phase.succeeded
    [(headers, sent)] = hook.requests
    assert (
        verified(headers, sent, base64.b64decode(WHSEC.removeprefix("whsec_")))
        == f"finished-{body['metadata']['uid']}"
    )


# --- a finished job, after its webhook ----------------------------------------------------------------


@pytest.mark.kube
def test_a_finished_job_follows_its_workers_to_zero_then_needs_no_steps(secrets: JobRef):
    """The finish wrote the workers it saw (1 ready); the next step reads the Deployment (gone: 0
    ready) and says so, and after that the step has nothing to do (reconcile.needs_steps)."""
    body = finished_job("http://127.0.0.1:9/unused", job=secrets)
    del body["spec"]["notify"]
    body["status"]["conditions"] = []
    body["status"]["workers"] = {"desired": 0, "ready": 1}
    controller = _controller()
    outcome = controller.step(body, poll_interval=1.0)
    assert outcome is not None and outcome.status is not None and outcome.events == []
    assert outcome.status.workers.model_dump() == {"desired": 0, "ready": 0}
    body["status"] = outcome.status.model_dump(by_alias=True, mode="json")
    _still_finished(body)
    assert not needs_steps(outcome.status)
    assert controller.step(body, poll_interval=1.0) is None


@pytest.mark.kube
def test_a_finished_job_is_deleted_once_its_ttl_is_up(secrets: JobRef, kube: KubeAPI):
    """Controller.expire, as the TTL daemon calls it: the seconds left, then the deletion."""
    name = f"ttl-{uuid.uuid4().hex[:6]}"
    job = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": secrets.namespace},
        "spec": {"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}},
    }
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
    body = json.loads(kube.kubectl("get", "compjob", name, "-n", secrets.namespace, "-o", "json").stdout)
    completed = datetime.now(UTC) - timedelta(seconds=30)
    body["status"] = CompressionJobStatus(phase=Phase.succeeded, completion_time=completed).model_dump(
        by_alias=True, mode="json"
    )
    controller = _controller()
    for ttl, left in ((None, None), (3600, 3570)):
        body["spec"]["ttlSecondsAfterFinished"] = ttl
        seconds = controller.expire(body)
        assert seconds == left if left is None else left - 5 < seconds <= left
    assert kube.kubectl("get", "compjob", name, "-n", secrets.namespace, check=False).returncode == 0
    body["spec"]["ttlSecondsAfterFinished"] = 30
    assert controller.expire(body) <= 0
    wait_until(
        lambda: kube.kubectl("get", "compjob", name, "-n", secrets.namespace, check=False).returncode != 0,
        30,
        "the job deleted",
    )
