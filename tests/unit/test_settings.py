"""Settings come from KOMPRESSOR_* variables with `__` nesting; secrets never show in a repr."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import pytest
from botocore.utils import parse_timestamp as botocore_parse
from hypothesis import given, settings
from hypothesis import strategies as st

from kompressor_operator.settings import OperatorSettings
from kompressor_s3 import parse_timestamp


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KOMPRESSOR_BROKER__URL", "amqp://u:hunter2@rabbit:5672/%2F")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__ENDPOINT_URL", "http://seaweedfs:8333")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__ACCESS_KEY_ID", "AKIA-test")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__REGION", "eu-west-1")
    settings = OperatorSettings()
    assert settings.broker.url.get_secret_value() == "amqp://u:hunter2@rabbit:5672/%2F"
    assert settings.storage.endpoint_url == "http://seaweedfs:8333"
    assert settings.storage.region == "eu-west-1"
    shown = repr(settings) + str(settings.model_dump())
    assert "hunter2" not in shown and "s3cr3t-value" not in shown and "AKIA-test" not in shown


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)))
def test_s3_timestamps_parse_as_botocore_parses_them(moment: datetime):
    """The fast parser agrees with botocore's own on both forms S3 sends."""
    iso = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    rfc = email.utils.format_datetime(moment.replace(microsecond=0), usegmt=True)
    for text in (iso, rfc):
        assert parse_timestamp(text) == botocore_parse(text)
        assert parse_timestamp(text).utcoffset() == timedelta(0)


def test_header_dates_never_reach_botocores_parser(monkeypatch: pytest.MonkeyPatch):
    """Every GET's Last-Modified header ("Tue, 01 Dec 2026 10:00:00 GMT") is parsed here: its T
    once sent it to the ISO branch, which failed, and on to dateutil (0.3 ms per GET)."""
    import kompressor_s3

    def refuse(value):
        raise AssertionError(f"botocore's parser called for {value!r}")

    monkeypatch.setattr(kompressor_s3, "botocore_parse_timestamp", refuse)
    for text in ("Tue, 01 Dec 2026 10:00:00 GMT", "Thu, 03 Dec 2026 02:10:00 GMT", "2026-12-01T10:00:00Z"):
        assert parse_timestamp(text).utcoffset() == timedelta(0)


def _fields(model, prefix=""):
    for name, info in model.model_fields.items():
        yield prefix + name, name
        if hasattr(info.annotation, "model_fields"):
            yield from _fields(info.annotation, prefix + name + ".")


def test_every_setting_is_read_somewhere():
    """A setting nothing reads is a knob that does nothing (broker.connect_attempts was one)."""
    from pathlib import Path

    from kompressor_worker.settings import WorkerSettings

    root = Path(__file__).resolve().parents[2]
    code = (
        "\n".join(
            path.read_text()
            for folder in (
                "kompressor",
                "kompressor_s3",
                "operator/kompressor_operator",
                "worker/kompressor_worker",
            )
            for path in (root / folder).rglob("*.py")
            if path.name != "settings.py"
        )
        + (root / "kompressor" / "settings.py").read_text().split("def for_job", 1)[1]
    )
    for model in (OperatorSettings, WorkerSettings):
        for path, name in _fields(model):
            assert f".{name}" in code, f"{model.__name__}.{path} is read nowhere"


@pytest.mark.parametrize(
    "name", ["KOMPRESSOR_STORAGE_ENDPOINT_ALLOW_NETWORKS", "KOMPRESSOR_URL_ALLOW_NETWORKS"]
)
def test_a_worker_with_a_network_that_is_no_cidr_stops_at_start_naming_the_setting(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from kompressor_worker.__main__ import main

    monkeypatch.setenv("KOMPRESSOR_QUEUE", "kompressor.ns.job.12345678.tasks")
    monkeypatch.setenv(name, '["10.20.0.0/16", "10.300.0.0/16"]')
    assert main([]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kompressor-worker: invalid configuration: " + name) and "10.300.0.0/16" in error
