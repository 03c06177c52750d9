"""A webhook receiver's side, written from the Standard Webhooks spec and not from kompressor's
code (`verified`), and receivers on 127.0.0.1 that answer well or badly (`Receiver`). Each receiver
is a raw TCP server, so it can answer what no HTTP server library would send."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import socket
import socketserver
import threading
import time
from collections.abc import Callable


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


Answer = Callable[[socket.socket, threading.Event], None]


def answers(status: int) -> Answer:
    def answer(sock: socket.socket, release: threading.Event) -> None:
        sock.sendall(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())

    return answer


def garbage(sock: socket.socket, release: threading.Event) -> None:
    sock.sendall(b"SPAM SPAM SPAM\r\n\r\n")


def over_long_line(sock: socket.socket, release: threading.Event) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")


def drip(sock: socket.socket, release: threading.Event) -> None:
    """A status line and one endless header, a byte every 20 ms: never a whole answer."""
    for byte in itertools.chain(b"HTTP/1.1 200 OK\r\nX-Drip: ", itertools.repeat(ord("a"))):
        sock.sendall(bytes([byte]))
        if release.wait(0.02):
            return


class Receiver:
    """A TCP server on 127.0.0.1 that reads each request whole, keeps it, and answers connection
    number i with answers[i] (the last one again for any later connection)."""

    def __init__(self, *answers: Answer):
        self.answers = answers
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                headers, body = _read_request(self.request)
                index = len(receiver.requests)
                receiver.requests.append((headers, body))
                try:
                    receiver.answers[min(index, len(receiver.answers) - 1)](self.request, receiver.release)
                except OSError:
                    pass  # the client gave up on us: that is what some tests are about

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/kompressor?team=web"

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _read_request(sock: socket.socket) -> tuple[dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers[":request-line"] = lines[0]
    while len(body) < int(headers.get("Content-Length", 0)):
        body += sock.recv(65536)
    return headers, body
