"""The test bed's services are real: a broker that confirms, a store that checks signatures."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid

import pika
import pytest

from testbed import RabbitMQ, S3Server


def test_publish_with_confirms_and_consume(rabbitmq: RabbitMQ):
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        queue = f"testbed.{uuid.uuid4().hex[:8]}"
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for n in range(5):
            channel.basic_publish("", queue, str(n).encode(), mandatory=True)  # raises unless confirmed
        with pytest.raises(pika.exceptions.UnroutableError):
            channel.basic_publish("", f"{queue}.missing", b"x", mandatory=True)
        bodies = []
        for method, _props, body in channel.consume(queue, inactivity_timeout=5):
            assert method is not None, "a confirmed message never arrived"
            bodies.append(body)
            channel.basic_ack(method.delivery_tag)
            if len(bodies) == 5:
                break
        channel.cancel()
        assert bodies == [b"0", b"1", b"2", b"3", b"4"]
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        connection.close()


def test_put_and_get_an_object(s3: S3Server, bucket: str):
    client = s3.client()
    client.put_object(Bucket=bucket, Key="a/b.jpg", Body=b"\xff\xd8bytes", Metadata={"k": "v"})
    got = client.get_object(Bucket=bucket, Key="a/b.jpg")
    assert got["Body"].read() == b"\xff\xd8bytes"
    assert got["Metadata"] == {"k": "v"}
    listed = client.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed["Contents"]] == ["a/b.jpg"]


def test_an_unsigned_request_is_refused(s3: S3Server, bucket: str):
    s3.client().put_object(Bucket=bucket, Key="secret.jpg", Body=b"x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{s3.endpoint_url}/{bucket}/secret.jpg", timeout=5)
    assert refused.value.code == 403
