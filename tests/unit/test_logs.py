"""Third-party loggers are held quiet below DEBUG; a log line's reason reaches the root cause."""

from __future__ import annotations

import logging

import pytest

from kompressor.logs import THIRD_PARTY_LEVELS, quiet_third_party, reason


@pytest.fixture(autouse=True)
def _restore_levels():
    saved = {name: logging.getLogger(name).level for name in [*THIRD_PARTY_LEVELS, "root"]}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("level", [logging.INFO, "INFO", "WARNING", logging.ERROR])
def test_libraries_are_held_quiet_below_debug(level):
    quiet_third_party(level)
    assert not logging.getLogger("pika.adapters.utils.connection_workflow").isEnabledFor(logging.ERROR)
    assert not logging.getLogger("botocore.endpoint").isEnabledFor(logging.INFO)
    assert logging.getLogger("botocore.endpoint").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)


@pytest.mark.parametrize("level", [logging.DEBUG, "DEBUG"])
def test_at_debug_they_follow_the_root(level):
    logging.getLogger().setLevel(logging.DEBUG)
    quiet_third_party(level)
    for name in THIRD_PARTY_LEVELS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.DEBUG


class _Connector(Exception):
    def __init__(self, exception: BaseException):
        super().__init__()
        self.exception = exception


def test_reason_unwraps_to_the_error_that_caused_it():
    refused = ConnectionRefusedError(111, "Connection refused")
    # pika's shape: an empty AMQPConnectionError whose first argument holds a connector error.
    assert reason(Exception(_Connector(refused))) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert reason(ValueError("bad")) == "ValueError: bad"
    assert reason(OSError()) == "OSError"


def test_every_worker_line_names_its_job(capsys):
    """JSON lines carry `job` (namespace/name); text lines show it in brackets."""
    import json
    import logging

    from kompressor_worker.logs import configure_logging

    configure_logging("json", "INFO", "shop/catalog")
    logging.getLogger("kompressor.worker").info("task %d done", 7)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["job"], line["message"]) == ("shop/catalog", "task 7 done")
    configure_logging("text", "INFO", "shop/catalog")
    logging.getLogger("kompressor.worker").warning("slow")
    assert "[shop/catalog]: slow" in capsys.readouterr().err


def test_a_job_is_named_namespace_slash_name():
    from kompressor.messages import JobRef

    assert str(JobRef(namespace="shop", name="catalog", uid="u")) == "shop/catalog"
