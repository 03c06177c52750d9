"""Which dependency a failed step names: the word behind StorageReachable and BrokerReachable."""

from __future__ import annotations

import pika.exceptions
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from kompressor_operator.engine import StepFailed, _failing
from kompressor_operator.status import Dependency


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (
            ClientError({"Error": {"Code": "InternalError", "Message": "disk full"}}, "PutObject"),
            Dependency.storage,
        ),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), Dependency.storage),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), Dependency.storage),
        (pika.exceptions.AMQPConnectionError("refused"), Dependency.broker),
        (pika.exceptions.StreamLostError("reset"), Dependency.broker),
        (ConnectionResetError("reset by peer"), Dependency.broker),
    ],
)
def test_a_failed_step_names_the_dependency_and_the_error(error: Exception, dependency: Dependency):
    failed = StepFailed(_failing(error), error)
    assert failed.dependency is dependency
    assert str(failed).startswith(f"{type(error).__name__}: ")
    assert dependency.condition == {"storage": "StorageReachable", "broker": "BrokerReachable"}[dependency]
