"""The codec's one error: an input that cannot become an output, with a machine-readable reason."""

from __future__ import annotations

REASONS = frozenset(
    {
        "empty_input",
        "decode_error",
        "unsupported_format",
        "too_many_pixels",
        "too_much_memory",
        "encode_error",
    }
)


class CodecError(Exception):
    """An input that cannot become an output; `reason` is one of REASONS, a machine-readable word."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[type[CodecError], tuple[str, str]]:
        # Crosses process boundaries (the worker's pool) intact.
        return (CodecError, (self.reason, self.message))


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
