"""Every machine-readable word that says why a task failed or was skipped, or why a result was
refused: `Result.reason`, the keys of `status.failuresByReason`, the manifest's `reason`, and the
`reason` label of the workers' and the operator's metrics. docs/troubleshooting.md explains them.

A result from an older worker may carry a word this version does not know: `Result.reason` keeps
it as a plain string (see messages.py), so it is still counted under its own word.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a task ended as it did (a failure, a skip, or a note on a done task)."""

    # The input (the codec).
    empty_input = "empty_input"
    decode_error = "decode_error"
    unsupported_format = "unsupported_format"
    too_many_pixels = "too_many_pixels"
    too_much_memory = "too_much_memory"
    encode_error = "encode_error"
    # Fetching a URL.
    invalid_url = "invalid_url"
    forbidden_scheme = "forbidden_scheme"
    forbidden_address = "forbidden_address"
    too_many_redirects = "too_many_redirects"
    http_error = "http_error"
    connection_error = "connection_error"
    tls_error = "tls_error"
    timeout = "timeout"
    too_large = "too_large"
    # The storage.
    source_missing = "source_missing"
    access_denied = "access_denied"
    storage_error = "storage_error"
    storage_unavailable = "storage_unavailable"
    destination_missing = "destination_missing"
    output_changed = "output_changed"
    # The task's output.
    invalid_key = "invalid_key"
    output_collision = "output_collision"
    exists = "exists"  # skipped: the output is there already
    not_smaller = "not_smaller"  # skipped: neverLarger stored nothing
    would_upscale = "would_upscale"  # a rendition skipped: wider than its source
    quality_floor_unreachable = "quality_floor_unreachable"  # done: no quality met targetSSIM
    # The worker.
    worker_crashed = "worker_crashed"
    worker_stopping = "worker_stopping"
    internal_error = "internal_error"
    # Messages, and what the operator writes for a task no worker reported.
    malformed_message = "malformed_message"
    unknown_schema_version = "unknown_schema_version"
    attempts_exhausted = "attempts_exhausted"
    expired = "expired"
    queue_overflow = "queue_overflow"
    unknown = "unknown"  # a failure that carried no reason
    # Results the operator refuses to count (its refused-results metric).
    wrong_job = "wrong_job"
    unpublished_id = "unpublished_id"
