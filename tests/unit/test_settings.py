"""Settings come from KOMPRESSOR_* variables with `__` nesting; secrets never show in a repr."""

from __future__ import annotations

import pytest

from kompressor_operator.settings import OperatorSettings


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KOMPRESSOR_BROKER__URL", "amqp://u:hunter2@rabbit:5672/%2F")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__ENDPOINT_URL", "http://seaweedfs:8333")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__ACCESS_KEY_ID", "AKIA-test")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("KOMPRESSOR_STORAGE__REGION", "eu-west-1")
    monkeypatch.setenv("KOMPRESSOR_NAMESPACES", '["shop", "media"]')
    settings = OperatorSettings()
    assert settings.broker.url.get_secret_value() == "amqp://u:hunter2@rabbit:5672/%2F"
    assert settings.storage.endpoint_url == "http://seaweedfs:8333"
    assert settings.storage.region == "eu-west-1"
    assert settings.namespaces == ["shop", "media"]
    shown = repr(settings) + str(settings.model_dump())
    assert "hunter2" not in shown and "s3cr3t-value" not in shown and "AKIA-test" not in shown
