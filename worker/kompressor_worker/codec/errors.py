"""The codec's one error: an input that cannot become an output, with a machine-readable reason."""

from __future__ import annotations

from kompressor.reasons import Reason

REASONS = frozenset(
    {
        Reason.empty_input,
        Reason.decode_error,
        Reason.unsupported_format,
        Reason.too_many_pixels,
        Reason.too_much_memory,
        Reason.encode_error,
    }
)


class CodecError(Exception):
    """An input that cannot become an output; `reason` is one of REASONS, a machine-readable word."""

    def __init__(self, reason: Reason, message: str):
        self.reason = reason
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[type[CodecError], tuple[str, str]]:
        # Crosses process boundaries (the worker's pool) intact.
        return (CodecError, (self.reason, self.message))


def describe(exc: BaseException) -> str:
    """An exception as its type's name and its text, for a result's message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
