"""One deadline for a whole network exchange: the name lookup, the connect and every send and receive.

Shared by the two clients that talk to addresses a job's spec chose: the worker's URL fetch and the
operator's finish webhook. A peer that drips one byte at a time, or a resolver that never answers,
holds the caller until the deadline and not a moment longer.

What it must never do: block past `deadline` (a `time.monotonic()` value), or decide which addresses
may be reached (that is `kompressor.addresses`).
"""

from __future__ import annotations

import io
import socket
import threading
import time

READ_BUFFER_BYTES = 64 * 1024


def remaining(deadline: float) -> float:
    """Seconds left before `deadline`; TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


def getaddrinfo_within(host: str, port: int, deadline: float) -> list:
    """socket.getaddrinfo has no timeout: run it in a daemon thread and stop waiting at the deadline
    (the thread ends when the resolver gives up)."""
    outcome: dict[str, object] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as error:
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"kompressor-dns-{host}", daemon=True).start()
    if not done.wait(remaining(deadline)):
        raise TimeoutError(f"looking up {host} took too long")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["infos"]  # type: ignore[return-value]


class DeadlineSocket:
    """A connected socket as http.client sees it (`connection.sock = DeadlineSocket(...)`): each send
    and receive may take only the time left before the deadline, so many slow steps cannot add up
    past it. The caller closes the real socket."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(remaining(self._deadline))
        self._sock.sendall(data)

    def recv_into(self, buffer) -> int:
        self._sock.settimeout(remaining(self._deadline))
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"only 'rb' is supported, not {mode!r}")
        return io.BufferedReader(_DeadlineReader(self), buffer_size=READ_BUFFER_BYTES)

    def close(self) -> None:
        pass  # the caller closes the real socket when it is done with the response


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: DeadlineSocket):
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)
