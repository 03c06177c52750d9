"""A job's own S3 endpoint, judged at every connection the operator's client and its workers'
open: the client connects to the address the guard judged, so a name that resolves elsewhere later
(DNS rebinding) sends nothing there. The name server is the one thing faked here (a name of the
test's own); the S3 server and the other listener are real, on loopback addresses."""

from __future__ import annotations

import socket
import threading

import pytest
from botocore.exceptions import EndpointConnectionError
from pydantic import SecretStr

from kompressor.crd import CompressionJobSpec, InputFormat, Storage
from kompressor.messages import JobRef
from kompressor.settings import StorageSettings
from kompressor_operator.builders import worker_settings_env
from kompressor_operator.endpoints import endpoint_guard, guarded_networks
from kompressor_s3 import s3_client
from kompressor_worker.settings import WorkerSettings
from kompressor_worker.task import TaskRunner
from testbed import S3Server

NAME = "s3.rebinding.test"


class _Listener:
    """A TCP listener on 127.0.0.2 that counts the connections it accepts (and answers nothing)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.2", port))
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        """Stop listening: shutdown wakes the accepting thread, which holds the port until then."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def name_server(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """NAME resolves to whatever the test puts in the dict; everything else as before."""
    answers: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == NAME:
            return real(answers["address"], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_a_name_that_rebinds_outside_the_allow_list_gets_no_connection(
    s3: S3Server, bucket: str, name_server: dict[str, str]
) -> None:
    endpoint = f"http://{NAME}:{s3.port}"
    guard = endpoint_guard(Storage.model_validate({"endpointURL": endpoint}), None, ["127.0.0.1/32"])
    assert guard is not None
    storage = StorageSettings(
        endpoint_url=endpoint,
        access_key_id=SecretStr(s3.access_key),
        secret_access_key=SecretStr(s3.secret_key),
        region=s3.region,
        max_attempts=1,
    )
    client = s3_client(storage, vet=guard)
    name_server["address"] = "127.0.0.1"  # the S3 server, inside the allow-list
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0

    # The name now answers with 127.0.0.2 (outside the list), where something listens on the same
    # port number the endpoint names.
    other = _Listener(s3.port)
    name_server["address"] = "127.0.0.2"
    client._endpoint.http_session._manager.clear()  # the next request opens a new connection
    with pytest.raises(EndpointConnectionError):
        client.list_objects_v2(Bucket=bucket)
    assert other.accepted == 0

    # Without the guard, the same client follows the name there: what the guard prevents.
    unguarded = s3_client(storage)
    with pytest.raises(Exception):  # noqa: B017 - the listener answers nothing
        unguarded.list_objects_v2(Bucket=bucket)
    assert other.accepted >= 1
    other.close()


def test_a_workers_client_judges_each_connection_against_the_networks_its_deployment_names(
    s3: S3Server, bucket: str, name_server: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker reads its environment as the operator renders it for a job with its own endpoint
    (builders.worker_settings_env), and its task client refuses the rebound name."""
    endpoint = f"http://{NAME}:{s3.port}"
    spec = CompressionJobSpec.model_validate(
        {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {"s3": {"bucket": bucket, "prefix": "out/"}},
            "storage": {"endpointURL": endpoint, "credentialsSecret": "team-s3"},
        }
    )
    allow = guarded_networks(spec.storage, "http://127.0.0.1:1", ["127.0.0.1/32"])
    env = worker_settings_env(
        JobRef(namespace="ns", name="job", uid="u"),
        spec,
        broker_url="amqp://127.0.0.1:1",
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        region=s3.region,
        endpoint_url=endpoint,
        health_port=0,
        log_level=None,
        log_format="text",
        allowed_input_formats=[InputFormat.jpeg],
        endpoint_allow_networks=allow,
    )
    for name, value in {**env, "KOMPRESSOR_STORAGE__MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, str(value))
    client = TaskRunner(WorkerSettings(), pool=None).client
    name_server["address"] = "127.0.0.1"
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0

    other = _Listener(s3.port)
    name_server["address"] = "127.0.0.2"
    client._endpoint.http_session._manager.clear()
    with pytest.raises(EndpointConnectionError):
        client.get_object(Bucket=bucket, Key="in/a.jpg")
    assert other.accepted == 0
    other.close()


def test_a_guarded_client_goes_past_a_proxy_of_the_environment_which_would_resolve_the_name_itself(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = StorageSettings(
        endpoint_url=s3.endpoint_url,
        access_key_id=SecretStr(s3.access_key),
        secret_access_key=SecretStr(s3.secret_key),
        region=s3.region,
        max_attempts=1,
    )
    proxy = _Listener(s3.port)  # answers nothing: a request sent through it fails
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.2:{s3.port}")
    monkeypatch.setenv("NO_PROXY", "")
    guarded = s3_client(
        storage, vet=endpoint_guard(Storage(endpoint_url=s3.endpoint_url), None, ["127.0.0.1/32"])
    )
    assert guarded.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert proxy.accepted == 0
    with pytest.raises(Exception):  # noqa: B017 - what the guard prevents: through the proxy
        s3_client(storage).list_objects_v2(Bucket=bucket)
    assert proxy.accepted >= 1
    proxy.close()


def test_the_operators_own_endpoint_is_not_judged_again() -> None:
    own = "http://seaweedfs.kompressor.svc:8333"
    assert endpoint_guard(Storage.model_validate({"endpointURL": own}), own, []) is None
    assert endpoint_guard(Storage.model_validate({}), own, []) is None
