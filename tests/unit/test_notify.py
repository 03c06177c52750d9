"""The finish webhook's pure parts: the signature, the signing key, the retry schedule, the docs."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor_operator import notify
from kompressor_operator.settings import OperatorSettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def test_the_signature_matches_the_specifications_test_vector():
    """The published vector of the Standard Webhooks specification (its secret in the whsec_ form)."""
    key = notify.hmac_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    headers = notify.delivery_headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, key)
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_a_key_is_its_bytes_or_the_bytes_its_whsec_form_encodes():
    assert notify.hmac_key("plain key") == b"plain key"
    assert notify.hmac_key("whsec_" + base64.b64encode(b"\x00\xff").decode()) == b"\x00\xff"
    for bad in ("", "whsec_", "whsec_not base64!"):
        with pytest.raises(ValueError):
            notify.hmac_key(bad)


def test_no_signature_without_a_key():
    assert set(notify.delivery_headers("finished-x", 1, b"{}", None)) == {"webhook-id", "webhook-timestamp"}


@given(st.integers(min_value=1, max_value=20), st.data())
def test_the_schedule_retries_what_may_succeed_until_the_attempts_run_out(attempts: int, data):
    attempt = data.draw(st.integers(min_value=1, max_value=attempts))
    retry = notify.Attempt("webhook answered HTTP 503", retry=True)
    verdict = notify.verdict(retry, attempt, attempts)
    if attempt < attempts:
        assert (verdict.status, verdict.reason) == ("Unknown", "WebhookRetrying")
        assert verdict.retry_in == notify.RETRY_DELAYS[min(attempt, len(notify.RETRY_DELAYS)) - 1]
    else:
        assert (verdict.status, verdict.reason, verdict.retry_in) == ("False", "WebhookFailed", None)
    final = notify.verdict(notify.Attempt("webhook answered HTTP 404"), attempt, attempts)
    assert (final.status, final.retry_in) == ("False", None)
    assert final.message == f"attempt {attempt} of {attempts}: webhook answered HTTP 404"
    delivered = notify.verdict(notify.Attempt(), attempt, attempts)
    assert (delivered.status, delivered.reason, delivered.retry_in) == ("True", "WebhookDelivered", None)


def _documented_verify():
    """The receiver's code in docs/webhooks.md, as a reader would paste it."""
    [code] = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


def test_the_documented_receiver_code_verifies_a_delivery_and_refuses_replays():
    verify = _documented_verify()
    body = json.dumps({"job": {"name": "catalog"}}).encode()
    key = b"the receiver's key"
    headers = notify.delivery_headers("finished-1", int(time.time()), body, key)
    seen: set = set()
    assert verify(headers, body, key, seen) == {"job": {"name": "catalog"}}
    with pytest.raises(ValueError, match="already delivered"):
        verify(headers, body, key, seen)
    with pytest.raises(ValueError, match="bad signature"):
        verify(headers, body + b" ", key, set())
    old = notify.delivery_headers("finished-1", int(time.time()) - 3600, body, key)
    with pytest.raises(ValueError, match="too old"):
        verify(old, body, key, set())


def test_the_docs_state_the_defaults():
    settings = OperatorSettings(_env_file=None)
    text = " ".join(DOCS.read_text().split())
    delays = (
        ", ".join(f"{d:g}" for d in notify.RETRY_DELAYS[:-1]) + f" and {notify.RETRY_DELAYS[-1]:g} s apart"
    )
    assert (
        f"Up to {settings.webhook_attempts} (the operator's `KOMPRESSOR_WEBHOOK_ATTEMPTS`), {delays}" in text
    )
    assert (
        f"one deadline of {settings.webhook_timeout_seconds:g} s (`KOMPRESSOR_WEBHOOK_TIMEOUT_SECONDS`)"
        in text
    )
