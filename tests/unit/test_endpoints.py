"""The storage endpoint guard: the operator's credentials go to its own endpoint only, and any other
endpoint needs the job's own Secret and an address inside the admin's allow-list. Hosts here are
addresses (or names of this machine), judged and refused before anything is sent."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from kompressor.addresses import AddressPolicy, address_allowed
from kompressor.crd import Storage
from kompressor.settings import StorageSettings
from kompressor_operator.endpoints import (
    EndpointRefused,
    check_endpoint,
    credentials_problem,
    same_endpoint,
)
from kompressor_operator.settings import OperatorSettings

OWN = "http://seaweedfs.kompressor.svc:8333"


def storage(endpoint: str | None, secret: str | None = None) -> Storage:
    return Storage.model_validate({"endpointURL": endpoint, "credentialsSecret": secret})


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (OWN, OWN, True),
        (OWN, "HTTP://SeaweedFS.kompressor.svc:8333/", True),
        ("https://s3.example.com", "https://s3.example.com:443", True),
        (None, None, True),
        (OWN, None, False),
        (None, OWN, False),
        (OWN, "http://seaweedfs.kompressor.svc:8334", False),
        (OWN, "https://seaweedfs.kompressor.svc:8333", False),
        (OWN, "http://seaweedfs.kompressor.svc.evil:8333", False),
        (OWN, "http://user@seaweedfs.kompressor.svc:8333", False),
        ("http://10.0.0.5:8333", "http://10.0.0.5:8333/x", False),
    ],
)
def test_same_endpoint(a, b, same):
    assert same_endpoint(a, b) is same


def test_the_operators_credentials_go_to_its_own_endpoint_only():
    assert credentials_problem(storage(None), OWN) is None
    assert credentials_problem(storage(OWN), OWN) is None
    assert credentials_problem(storage("http://169.254.169.254"), OWN).startswith("spec.storage.endpointURL:")
    assert credentials_problem(storage("https://s3.example.com"), None) is not None  # ours is AWS S3
    assert credentials_problem(storage("http://169.254.169.254", secret="mine"), OWN) is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:9",  # no Secret: refused before the address is even looked at
        "http://169.254.169.254",
        "http://2130706433:9",  # 127.0.0.1 spelled as a number
    ],
)
def test_another_endpoint_without_the_jobs_secret_is_refused(endpoint):
    with pytest.raises(EndpointRefused, match="credentialsSecret"):
        check_endpoint(storage(endpoint), OWN, ["127.0.0.0/8", "169.254.0.0/16"])


@pytest.mark.parametrize(
    ("endpoint", "allow"),
    [
        ("http://127.0.0.1:9", []),  # the default: no endpoint but ours
        ("http://127.0.0.1:9", ["127.0.0.2/32"]),
        ("http://169.254.169.254", ["127.0.0.0/8"]),
        ("http://2130706433:9", ["10.0.0.0/8"]),  # judged by the address it resolves to
        ("http://0x7f.1:9", ["10.0.0.0/8"]),
        ("http://[::ffff:127.0.0.1]:9", ["10.0.0.0/8"]),
        ("http://localhost:9", ["10.0.0.0/8"]),
        ("http://user:pw@127.0.0.1:9", ["127.0.0.0/8"]),  # user info in an endpoint: never
        ("http://127.0.0.1:99999", ["127.0.0.0/8"]),
    ],
)
def test_another_endpoint_outside_the_allow_list_is_refused(endpoint, allow):
    with pytest.raises(EndpointRefused, match=r"storage\.endpointAllowNetworks"):
        check_endpoint(storage(endpoint, secret="mine"), OWN, allow)


def test_public_addresses_need_listing_too():
    """With no allow-list no other endpoint is reachable, public or not; listed networks are."""
    assert not address_allowed("8.8.8.8", AddressPolicy.only())
    assert address_allowed("8.8.8.8", AddressPolicy.only("8.8.8.0/24"))
    assert not address_allowed("2001:4860:4860::8888", AddressPolicy.only("8.8.8.0/24"))
    assert address_allowed("::ffff:10.1.2.3", AddressPolicy.only("10.0.0.0/8"))
    assert not address_allowed("64:ff9b::a01:203", AddressPolicy.only("10.0.0.0/8"))  # NAT64 is no listing
    assert address_allowed("8.8.8.8", AddressPolicy())  # URL sources and webhooks: public is fine


def test_an_allowed_endpoint_with_the_jobs_secret_passes():
    check_endpoint(storage("http://127.0.0.1:9", secret="mine"), OWN, ["127.0.0.1/32"])
    check_endpoint(storage(OWN), OWN, [])  # ours: never looked up, never refused
    check_endpoint(storage(None), OWN, [])


def test_a_malformed_allow_list_stops_the_operator_at_start(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS", '["10.0.0.0/33"]')
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        OperatorSettings()


def test_local_mode_gives_the_users_credentials_to_the_job_files_endpoint():
    """Local mode's choice (local.py): one person's machine, job file and credentials."""
    mine = StorageSettings(
        endpoint_url=OWN, access_key_id=SecretStr("AKIA-mine"), secret_access_key=SecretStr("s")
    )
    got = mine.for_job(storage("http://127.0.0.1:9"))
    assert got.endpoint_url == "http://127.0.0.1:9"
    assert got.access_key_id is not None and got.access_key_id.get_secret_value() == "AKIA-mine"
