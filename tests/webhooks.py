"""A webhook receiver's side, written from the Standard Webhooks spec and not from kompressor's
code: what the tests check each delivery with."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def verified(headers: dict[str, str], body: bytes, key: bytes, tolerance: float = 300.0) -> str:
    """The delivery's webhook-id when its signature is right and its timestamp recent; else ValueError."""
    lower = {name.lower(): value for name, value in headers.items()}
    delivery, timestamp = lower["webhook-id"], lower["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        raise ValueError(f"timestamp {timestamp} is too far from now")
    expected = hmac.new(key, f"{delivery}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for entry in lower["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(signature), expected):
            return delivery
    raise ValueError("no v1 signature matches")
