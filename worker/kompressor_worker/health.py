"""/healthz (the pool is alive and the broker reachable recently), /readyz (consuming), /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kompressor_worker.metrics import Metrics

# A worker that cannot reach the broker for this long is unhealthy: let Kubernetes restart it.
BROKER_GRACE_SECONDS = 120.0


@dataclass
class Health:
    """What /healthz and /readyz report: the pool alive, consuming, and how long the broker has
    been lost (None while connected)."""

    pool_alive: Callable[[], bool]
    consuming: bool = False
    broker_lost_at: float | None = field(default_factory=time.monotonic)

    def connected(self) -> None:
        self.broker_lost_at = None

    def disconnected(self) -> None:
        self.consuming = False
        if self.broker_lost_at is None:
            self.broker_lost_at = time.monotonic()

    def healthy(self) -> bool:
        lost = self.broker_lost_at
        return self.pool_alive() and (lost is None or time.monotonic() - lost < BROKER_GRACE_SECONDS)


def serve(health: Health, metrics: Metrics, port: int) -> ThreadingHTTPServer:
    """Start the endpoints on a daemon thread; the returned server's `server_port` is the bound port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._reply(200 if health.healthy() else 503, b"ok\n" if health.healthy() else b"unhealthy\n")
            elif self.path == "/readyz":
                self._reply(200 if health.consuming else 503, b"ok\n" if health.consuming else b"not ready\n")
            elif self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # probes every few seconds would drown the log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
