"""One S3 client per running job in the operator: they share one botocore session, so the S3 service
model is loaded once per process, and each keeps its own credentials and endpoint."""

from __future__ import annotations

import threading

from pydantic import SecretStr

from kompressor.settings import StorageSettings
from kompressor_s3 import s3_client


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _storage(n: int) -> StorageSettings:
    return StorageSettings(
        endpoint_url=f"http://127.0.0.1:{9000 + n}",
        access_key_id=SecretStr(f"key-{n}"),
        secret_access_key=SecretStr(f"secret-{n}"),
    )


def test_twenty_clients_cost_megabytes_not_a_service_model_each():
    s3_client(_storage(0))  # the session and its model, once
    before = _rss_mb()
    clients = [s3_client(_storage(n)) for n in range(20)]
    grown = _rss_mb() - before
    assert grown < 80, f"{grown:.0f} MB for 20 clients (a session per client: ~12 MB each, 240 MB)"
    assert len({id(c) for c in clients}) == 20


def test_each_client_keeps_its_own_endpoint_and_credentials_even_made_from_threads():
    made: dict[int, object] = {}

    def make(n: int) -> None:
        made[n] = s3_client(_storage(n))

    threads = [threading.Thread(target=make, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for n, client in made.items():
        assert client.meta.endpoint_url == f"http://127.0.0.1:{9000 + n}"
        assert client._request_signer._credentials.access_key == f"key-{n}"
    assert sorted(made) == list(range(8))
