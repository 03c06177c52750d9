"""RabbitMQ from Debian's rabbitmq-server, without systemd, bound to 127.0.0.1 on free ports.

The node runs as the current user straight from /usr/lib/rabbitmq/bin (not the /usr/sbin wrapper,
which switches to the `rabbitmq` user and then needs every directory owned by it). Its own epmd port,
node name, cookie (HOME) and data directory keep it apart from any other node on the machine.
For a node's pods it listens on the node's bridge gateway instead (`host`), and since `guest` may only
log in from loopback, its one user is then another one with a random password.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.process import Service, free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
# Well under the broker's default 30 min, and above any task timeout the tests use.
CONSUMER_TIMEOUT_MS = 15 * 60 * 1000


def installed() -> bool:
    return (RABBITMQ_BIN / "rabbitmq-server").exists()


def amqp_handshake(port: int, host: str = "127.0.0.1") -> bool:
    """True when the broker answers the AMQP protocol header with Connection.Start."""
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        return sock.recv(1) == b"\x01"


@dataclass
class RabbitMQ:
    """A running broker: its AMQP port, environment and process."""

    port: int
    run_dir: Path
    env: dict[str, str]
    service: Service
    host: str = "127.0.0.1"
    user: str = "guest"
    password: str = "guest"

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/%2F"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run rabbitmqctl against this node."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return result.stdout

    def stop(self) -> None:
        self.service.stop()
        # The node's epmd daemonizes out of the process group; it serves only this node's port.
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        subprocess.run([epmd, "-kill"], env={**os.environ, **self.env}, capture_output=True, timeout=10)

    def kill(self) -> None:
        """kill -9 the node, as a crash would."""
        self.service.signal(signal.SIGKILL)
        assert self.service.process is not None
        self.service.process.wait(10)

    def restart(self, timeout: float = 90) -> None:
        """Start the node again on the same port and data; durable queues come back."""
        if self.service.alive():
            self.stop()
        self.service.start()
        self.service.wait_ready(lambda: amqp_handshake(self.port, self.host), timeout)


def start_rabbitmq(run_dir: Path, timeout: float = 90, host: str = "127.0.0.1") -> RabbitMQ:
    if not installed():
        raise RuntimeError("rabbitmq-server is not installed: apt-get install rabbitmq-server")
    run_dir = run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "log").mkdir(parents=True)
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    user, password = ("guest", "guest") if host == "127.0.0.1" else ("kompressor", secrets.token_hex(12))
    config = run_dir / "rabbitmq.conf"
    config.write_text(
        "\n".join(
            [
                f"listeners.tcp.1 = {host}:{port}",
                f"default_user = {user}",
                f"default_pass = {password}",
                f"consumer_timeout = {CONSUMER_TIMEOUT_MS}",
                "disk_free_limit.absolute = 50MB",
                "log.console = false",
                "log.file.level = info",
                "",
            ]
        )
    )
    plugins = run_dir / "enabled_plugins"
    plugins.write_text("[].\n")
    env = {
        "HOME": str(run_dir),  # the Erlang cookie is made here
        "RABBITMQ_CONF_ENV_FILE": str(run_dir / "rabbitmq-env.conf"),  # ignore /etc's
        "RABBITMQ_NODENAME": f"kompressor-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_MNESIA_BASE": str(run_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(run_dir / "log"),
        "RABBITMQ_PID_FILE": str(run_dir / "rabbitmq.pid"),
    }
    service = Service("rabbitmq", [str(RABBITMQ_BIN / "rabbitmq-server")], run_dir / "server.log", env)
    service.start()
    service.wait_ready(lambda: amqp_handshake(port, host), timeout)
    return RabbitMQ(port, run_dir, env, service, host, user, password)
