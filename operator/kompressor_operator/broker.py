"""RabbitMQ adapter of the control plane: a job's queues, confirmed publishing, results, depth.

Thin by design: the topology (names and arguments) comes from kompressor.messages; this module only
talks AMQP. Used by the operator's handlers and by local mode, each from one thread per connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pika
import pika.exceptions

from kompressor.crd import Limits
from kompressor.messages import (
    CONTENT_TYPE,
    JobRef,
    Result,
    Task,
    dead_queue,
    plain_queue_arguments,
    result_queue,
    task_queue,
    task_queue_arguments,
)

PERSISTENT = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2)


def connect(url: str, heartbeat: int = 30) -> pika.BlockingConnection:
    parameters = pika.URLParameters(url)
    parameters.heartbeat = heartbeat
    parameters.blocked_connection_timeout = 60
    return pika.BlockingConnection(parameters)


def declare_job_queues(channel, job: JobRef, limits: Limits) -> None:
    """The dead-letter queue first, so the task queue's dead letters always have somewhere to go."""
    channel.queue_declare(dead_queue(job), durable=True, arguments=plain_queue_arguments())
    channel.queue_declare(result_queue(job), durable=True, arguments=plain_queue_arguments())
    channel.queue_declare(task_queue(job), durable=True, arguments=task_queue_arguments(job, limits))


def delete_job_queues(channel, job: JobRef) -> None:
    for name in (task_queue(job), result_queue(job), dead_queue(job)):
        channel.queue_delete(name)


def publish_tasks(channel, tasks: Iterable[Task]) -> int:
    """Publish with confirms (the channel must be in confirm mode): each returns once the broker
    has it. Returns how many were published."""
    count = 0
    for task in tasks:
        channel.basic_publish("", task_queue(task.job), task.encode(), PERSISTENT, mandatory=True)
        count += 1
    return count


@dataclass(frozen=True)
class Depth:
    """Messages ready in a queue and consumers on it (a passive declare cannot see unacked ones)."""

    ready: int
    consumers: int


def queue_depth(channel, name: str) -> Depth:
    method = channel.queue_declare(name, passive=True).method
    return Depth(ready=method.message_count, consumers=method.consumer_count)


@dataclass(frozen=True)
class DeadLetter:
    """A task the broker dead-lettered: rejected by a worker, or out of delivery attempts."""

    body: bytes
    reason: str


def drain_results(channel, job: JobRef, limit: int = 1000) -> Iterator[tuple[int, Result | None, bytes]]:
    """Up to `limit` results (delivery tag, decoded result or None when undecodable, raw body),
    without acking: the caller acks once what they feed is persisted."""
    for _ in range(limit):
        method, _properties, body = channel.basic_get(result_queue(job), auto_ack=False)
        if method is None:
            return
        try:
            yield method.delivery_tag, Result.decode(body), body
        except ValueError:
            yield method.delivery_tag, None, body


def drain_dead_letters(channel, job: JobRef, limit: int = 1000) -> Iterator[tuple[int, DeadLetter]]:
    for _ in range(limit):
        method, properties, body = channel.basic_get(dead_queue(job), auto_ack=False)
        if method is None:
            return
        deaths = (properties.headers or {}).get("x-death") or [{}]
        reason = deaths[0].get("reason", "dead_lettered")
        if isinstance(reason, bytes):
            reason = reason.decode()
        yield method.delivery_tag, DeadLetter(body=body, reason=str(reason))
