"""Instruments for the chaos tests: what they break, and how they count what came out.

- `S3Recorder`: a TCP proxy in front of the S3 server that reads the HTTP request and status lines
  passing through it (it never changes a byte, so SigV4 signatures still match). It answers "how
  many times was this output written": the PUTs of a key that S3 answered with a 2xx.
- `S3Faults`: a proxy in front of the S3 server that answers InternalError, as a store whose disk is
  full does, to the requests it is told to refuse while it is failing; the rest pass unchanged.
- `Firehose`: RabbitMQ's firehose tracer (`rabbitmqctl trace_on`, core RabbitMQ, no plugin) copied
  into a durable quorum queue, so every message published (tasks, results) and every delivery of a
  task is recorded, across a broker restart too (tracing is re-armed once the node is back).
- `Monkey`: a thread that kill -9s worker process groups (the worker and its pool, as an OOM kill or
  a node failure would) and single pool children, again and again, until stopped.
- Helpers: the process tree from /proc, a broker user with a random password (so that a secret to
  search for exists), the job inputs, the output check, and the secret search.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import random
import re
import secrets
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

import pika
from PIL import Image

from kompressor.messages import MessageError, Result, Task
from testbed import RabbitMQ, S3Server
from tests.corpus import real_photos
from tests.jobs import process_tree

# --- S3: count the writes ----------------------------------------------------------------------------

_REQUEST = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (/[^ \r\n]*) HTTP/1\.1\r\n")
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class _Scanner:
    """Finds a pattern in a byte stream read in chunks, each match once, also across chunk ends."""

    def __init__(self, pattern: re.Pattern[bytes], keep: int = 8192):
        self.pattern = pattern
        self.keep = keep
        self.tail = b""

    def feed(self, chunk: bytes) -> list[re.Match[bytes]]:
        data = self.tail + chunk
        found = [m for m in self.pattern.finditer(data) if m.end() > len(self.tail)]
        self.tail = data[-self.keep :]
        return found


@dataclass(frozen=True)
class Exchange:
    """One HTTP request seen by the recorder and the status S3 answered (0: no answer)."""

    method: str
    path: str
    status: int


class _S3Proxy:
    """A TCP proxy on a free loopback port to the S3 server at `backend_port`: one thread accepts,
    one serves each connection (`_serve`, given the client's socket and the upstream's)."""

    thread_name = "s3-proxy"

    def __init__(self, backend_port: int):
        self.backend_port = backend_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stopping = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        threading.Thread(target=self._accept, name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.backend_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._serve(client, upstream)

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        raise NotImplementedError


class S3Recorder(_S3Proxy):
    """A byte-for-byte TCP proxy to the S3 server that records each request and its status.

    HTTP/1.1 without pipelining (botocore/urllib3): on one connection, answers come in request
    order, so each non-1xx status line settles the oldest pending request. A request whose
    connection closes unanswered is recorded with status 0."""

    thread_name = "s3-recorder"

    def __init__(self, backend_port: int):
        super().__init__(backend_port)
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        pending: collections.deque[tuple[str, str]] = collections.deque()
        guard = threading.Lock()

        def requests() -> None:
            scanner = _Scanner(_REQUEST)
            try:
                while chunk := client.recv(65536):
                    with guard:
                        for match in scanner.feed(chunk):
                            pending.append((match[1].decode(), match[2].decode()))
                    upstream.sendall(chunk)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=requests, daemon=True)
        thread.start()
        scanner = _Scanner(_STATUS)
        try:
            while chunk := upstream.recv(65536):
                with guard:
                    for match in scanner.feed(chunk):
                        status = int(match[1])
                        if status >= 200 and pending:
                            self._record(*pending.popleft(), status)
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            thread.join(timeout=5)
            with guard:
                while pending:
                    self._record(*pending.popleft(), 0)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.exchanges.append(Exchange(method, path, status))

    def writes(self, bucket: str, prefix: str) -> Counter[str]:
        """Key -> PUTs of a whole object under `bucket/prefix` that S3 answered with a 2xx
        (multipart parts and copies carry a query string and are not counted)."""
        counts: Counter[str] = Counter()
        with self._lock:
            exchanges = list(self.exchanges)
        for exchange in exchanges:
            if exchange.method != "PUT" or not 200 <= exchange.status < 300:
                continue
            parts = urlsplit(exchange.path)
            if parts.query:
                continue
            path = unquote(parts.path).lstrip("/")
            if path.startswith(f"{bucket}/{prefix}"):
                counts[path.removeprefix(f"{bucket}/")] += 1
        return counts

    def count(self, method: str, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1 for e in self.exchanges if e.method == method and (status is None or e.status == status)
            )


_INTERNAL_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_INTERNAL_ERROR_BODY)
) + _INTERNAL_ERROR_BODY


class S3Faults(_S3Proxy):
    """A proxy to the S3 server that answers 500 InternalError to each request `refuse(method, path)`
    names while `failing` is set; everything else passes byte for byte (SigV4 still matches).

    It reads each request's head and, by its Content-Length, its body, so it knows where the next
    request starts (botocore/urllib3 never pipeline: a request comes after the previous answer). A
    refused request gets the error before its body when it waits for `100-continue` (botocore's
    PutObject does), after it otherwise; then the connection closes, as `Connection: close` says."""

    thread_name = "s3-faults"

    def __init__(self, backend_port: int, refuse: Callable[[str, str], bool]):
        super().__init__(backend_port)
        self.refuse = refuse
        self.failing = threading.Event()
        self.refused: list[str] = []

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = dict(
                    (name.strip().lower(), value.strip())
                    for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line)
                )
                if "transfer-encoding" in headers:  # no Content-Length to frame it: pass the rest
                    upstream.sendall(head + b"\r\n\r\n" + buffer)
                    _pump(client, upstream)
                    return
                length = int(headers.get("content-length", "0"))
                if self.failing.is_set() and self.refuse(method, unquote(path)):
                    if headers.get("expect", "").lower() != "100-continue":
                        while len(buffer) < length and (chunk := client.recv(65536)):
                            buffer += chunk
                    self.refused.append(f"{method} {unquote(path)}")
                    client.sendall(_INTERNAL_ERROR)
                    return
                upstream.sendall(head + b"\r\n\r\n")
                body, buffer = buffer[:length], buffer[length:]
                upstream.sendall(body)
                remaining = length - len(body)
                while remaining > 0:
                    chunk = client.recv(min(65536, remaining))
                    if not chunk:
                        return
                    upstream.sendall(chunk)
                    remaining -= len(chunk)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


# --- RabbitMQ: record the traffic --------------------------------------------------------------------


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class Traffic:
    """What the firehose saw for one job's queues."""

    task_publishes: Counter[int] = field(default_factory=Counter)  # task id -> publications
    task_deliveries: Counter[int] = field(default_factory=Counter)  # task id -> deliveries to workers
    result_publishes: Counter[int] = field(default_factory=Counter)  # task id -> results published
    undecodable_task_publishes: int = 0
    bodies: list[bytes] = field(default_factory=list)  # every traced body and its headers, for searches
    messages: int = 0

    def published_twice(self) -> int:
        return sum(1 for n in self.task_publishes.values() if n > 1)

    def duplicate_results(self) -> int:
        return sum(n - 1 for n in self.result_publishes.values() if n > 1)


class Firehose:
    """RabbitMQ's firehose into a durable quorum queue (quorum queues persist every message, so the
    record survives a broker restart). Call `rearm()` after a restart: tracing is not persistent."""

    def __init__(self, rabbitmq: RabbitMQ):
        self.rabbitmq = rabbitmq
        self.queue = f"chaos.firehose.{uuid.uuid4().hex[:8]}"

    def start(self) -> Firehose:
        connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
        try:
            channel = connection.channel()
            channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
            for key in ("publish.#", "deliver.#"):
                channel.queue_bind(self.queue, "amq.rabbitmq.trace", routing_key=key)
        finally:
            connection.close()
        self.rearm()
        return self

    def rearm(self) -> None:
        self.rabbitmq.ctl("trace_on")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.rabbitmq.ctl("trace_off")
        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
            connection.channel().queue_delete(self.queue)
            connection.close()

    def read(self, queue_base: str) -> Traffic:
        """Drain what was traced; keep what concerns the job whose queues start with `queue_base`."""
        traffic = Traffic()
        connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
        try:
            channel = connection.channel()
            while True:
                method, properties, body = channel.basic_get(self.queue, auto_ack=True)
                if method is None:
                    break
                headers = properties.headers or {}
                queues = [_text(key) for key in headers.get("routing_keys") or []]
                kind, _, target = method.routing_key.partition(".")
                if kind == "deliver":
                    queues = [target]
                if not any(q.startswith(queue_base) for q in queues):
                    continue
                traffic.messages += 1
                traffic.bodies.append(body)
                traffic.bodies.append(repr(headers).encode())
                if any(q.endswith(".tasks") for q in queues):
                    try:
                        task = Task.decode(body)
                    except MessageError:
                        traffic.undecodable_task_publishes += kind == "publish"
                        continue
                    counter = traffic.task_publishes if kind == "publish" else traffic.task_deliveries
                    counter[task.id] += 1
                elif kind == "publish" and any(q.endswith(".results") for q in queues):
                    with contextlib.suppress(MessageError):
                        traffic.result_publishes[Result.decode(body).id] += 1
        finally:
            connection.close()
        return traffic


def broker_user(rabbitmq: RabbitMQ) -> tuple[str, str]:
    """A broker user with a random password; returns (AMQP URL, password)."""
    user, password = f"chaos-{uuid.uuid4().hex[:6]}", secrets.token_hex(12)
    rabbitmq.ctl("add_user", user, password)
    rabbitmq.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    return f"amqp://{user}:{password}@127.0.0.1:{rabbitmq.port}/%2F", password


def restart_broker(rabbitmq: RabbitMQ, firehose: Firehose | None) -> float:
    """Stop the node (every client is disconnected), start it again on the same data; seconds taken."""
    started = time.monotonic()
    rabbitmq.restart()
    if firehose is not None:
        firehose.rearm()
    return time.monotonic() - started


def queues_of(rabbitmq: RabbitMQ, needle: str) -> list[str]:
    return [line for line in rabbitmq.ctl("list_queues", "-q", "name").split() if needle in line]


# --- processes ---------------------------------------------------------------------------------------


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def worker_leaders(root: int) -> list[int]:
    """The `kompressor-worker` processes below `root` that lead their process group."""
    tree, found, todo = process_tree(), [], [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            todo.append(child)
            with contextlib.suppress(OSError):
                if b"kompressor-worker" in _cmdline(child) and os.getpgid(child) == child:
                    found.append(child)
    return found


def pool_children(worker: int) -> list[int]:
    """The pool processes of one worker: the children of its multiprocessing forkserver."""
    tree = process_tree()
    servers = [pid for pid in tree.get(worker, []) if b"forkserver" in _cmdline(pid)]
    return [child for server in servers for child in tree.get(server, [])]


class Monkey(threading.Thread):
    """Each time `progress()` (outputs stored so far) passes another `every`, kill -9 a random
    worker's process group or, every third time, one of its pool children; until stopped. Kills
    follow progress rather than the clock, so a slow run is not killed more (and slowed further).
    A kill also happens when `patience` seconds pass without one, so a stalled run is shaken too;
    none once progress reaches `until`."""

    def __init__(
        self,
        workers: Callable[[], list[int]],
        progress: Callable[[], int],
        every: int = 12,
        patience: float = 8.0,
        until: int | None = None,
        seed: int = 9,
    ):
        super().__init__(name="chaos-monkey", daemon=True)
        self.workers = workers
        self.progress = progress
        self.every = every
        self.patience = patience
        self.until = until  # no kills once progress reaches it: the last tasks are not killed for ever
        self.random = random.Random(seed)
        self.worker_kills = 0
        self.child_kills = 0
        self.killed_logs: set[str] = set()  # where each killed worker wrote its stdout
        self._stop_event = threading.Event()

    def run(self) -> None:
        turn, next_at, last_kill = 0, self.every, time.monotonic()
        while not self._stop_event.wait(0.5):
            progress = self.progress()
            if self.until is not None and progress >= self.until:
                continue
            if progress < next_at and time.monotonic() - last_kill < self.patience:
                continue
            leaders = self.workers()
            if not leaders:
                continue
            turn += 1
            next_at = progress + self.every
            last_kill = time.monotonic()
            victim = self.random.choice(leaders)
            if turn % 3 == 0:
                children = pool_children(victim)
                if children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.random.choice(children), signal.SIGKILL)
                        self.child_kills += 1
                    continue
            with contextlib.suppress(OSError):
                log = os.readlink(f"/proc/{victim}/fd/1")
                os.killpg(victim, signal.SIGKILL)
                self.worker_kills += 1
                self.killed_logs.add(log)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=30)

    @property
    def kills(self) -> int:
        return self.worker_kills + self.child_kills


# --- inputs and outputs ------------------------------------------------------------------------------


def photo_inputs(count: int, max_side: int = 320) -> dict[str, bytes]:
    """`count` small real photographs under distinct names (the 24 photos, repeated)."""
    photos = list(real_photos(max_side=max_side).items())
    assert photos, "opencv-doc's photographs are missing"
    return {f"{i:04d}-{photos[i % len(photos)][0]}": photos[i % len(photos)][1] for i in range(count)}


def upload_parallel(s3: S3Server, bucket: str, files: dict[str, bytes], prefix: str = "in/") -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = s3.client()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda item: client.put_object(Bucket=bucket, Key=prefix + item[0], Body=item[1]),
                files.items(),
            )
        )


_clients = threading.local()


def count_objects(s3: S3Server, bucket: str, prefix: str) -> int:
    """Objects under the prefix but outside a job's `.kompressor/` folder (one S3 client per thread)."""
    client = getattr(_clients, "s3", None)
    if client is None:
        client = _clients.s3 = s3.client()
    paginator = client.get_paginator("list_objects_v2")
    return sum(
        1
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if "/.kompressor/" not in item["Key"]
    )


def undecodable_outputs(s3: S3Server, bucket: str, keys: Iterable[str], fmt: str = "WEBP") -> list[str]:
    """The outputs that do not decode fully as `fmt` (every one is read back and decoded)."""
    from concurrent.futures import ThreadPoolExecutor

    client = s3.client()

    def bad(key: str) -> str | None:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            with Image.open(io.BytesIO(body)) as image:
                image.load()
                return None if image.format == fmt and min(image.size) > 0 else f"{key}: {image.format}"
        except Exception as exc:
            return f"{key}: {exc}"

    with ThreadPoolExecutor(8) as pool:
        return [problem for problem in pool.map(bad, keys) if problem]


def find_secrets(places: dict[str, str | bytes], secret_values: dict[str, str]) -> list[str]:
    """'<secret name> in <place>' for every secret value found in any place."""
    found = []
    for place, text in places.items():
        data = text.encode() if isinstance(text, str) else text
        for name, value in secret_values.items():
            if value and value.encode() in data:
                found.append(f"{name} in {place}")
    return found


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll `check` until true; its exceptions propagate (unlike testbed's wait_until)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)


def worker_crashes(logs: dict[str, str], killed: set[str]) -> list[str]:
    """Worker logs that show a crash: the process ended without its last words ("stopped") after it
    started consuming, and was not killed by the monkey; or an exception escaped into a traceback
    (pika's own logged tracebacks of a failed connection attempt excepted); or its settings were
    refused. Text and JSON logs; `logs` must be of processes that have ended."""
    crashed = []
    for path, text in logs.items():
        entries = []  # (logger, message, has a traceback)
        lines = text.rstrip().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    entries.append((entry["logger"], entry["message"], "exception" in entry))
            elif line.startswith("Traceback"):
                entries.append(("pika" if " pika." in lines[i - 1] else "?", line, True))
            elif " kompressor." in line:
                entries.append(("kompressor", line, False))
        escaped = [m for logger, m, tb in entries if tb and not logger.startswith("pika")]
        ended = bool(entries) and entries[-1][1].endswith("stopped")
        # A SIGTERM (a scale-down) before the worker sets its handler ends it before "consuming".
        consumed = any("consuming " in m and ", prefetch " in m for _, m, _ in entries)
        if escaped or "invalid configuration" in text or (consumed and not ended and path not in killed):
            crashed.append(f"{path}: {escaped[0] if escaped else (entries or [('', '(empty)', 0)])[-1][1]}")
    return crashed


def read_logs(directory: Path) -> dict[str, str]:
    return {str(path): path.read_text(errors="replace") for path in sorted(directory.rglob("*.log"))}
