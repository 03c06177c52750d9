"""How loud the libraries under kompressor may be: the same rule for the operator, local mode and
the workers.

pika logs every failed connection attempt six times at ERROR (one with a traceback) and then raises
the same error to its caller; botocore, boto3 and urllib3 log routine requests at INFO and DEBUG;
aiohttp's access log writes a line for every liveness probe kopf answers. Our own code catches what
these libraries raise and logs one line that carries the reason (the worker's "broker unreachable
(...)", the engine's "job step failed (...)"), so their records add noise, not information. They are
held at WARNING, and pika at CRITICAL: its errors always reach us as exceptions, while a WARNING
level would still let its ERROR records through. At DEBUG nothing is held back: that is when someone
wants to see inside the libraries.

It must never configure handlers or formats: each process does that its own way (kopf's, the
worker's JSON lines).
"""

from __future__ import annotations

import logging

THIRD_PARTY_LEVELS = {
    "pika": logging.CRITICAL,
    "botocore": logging.WARNING,
    "boto3": logging.WARNING,
    "s3transfer": logging.WARNING,
    "urllib3": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    "kubernetes": logging.WARNING,
}


def quiet_third_party(level: int | str) -> None:
    """Hold the libraries' loggers at THIRD_PARTY_LEVELS unless `level` (the process's own) is DEBUG."""
    debug = logging.getLevelName(level) if isinstance(level, str) else level
    for name, quiet in THIRD_PARTY_LEVELS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if debug <= logging.DEBUG else quiet)


def reason(exc: BaseException) -> str:
    """An exception as `Type: message` for a log line, unwrapped to the error that caused it: pika's
    AMQPConnectionError has an empty message and wraps, in its first argument, a connector error that
    holds the socket's error in `.exception`."""
    while True:
        inner = getattr(exc, "exception", None)
        if not isinstance(inner, BaseException) and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
