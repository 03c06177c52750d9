"""The services a benchmark runs against: the broker and S3 server named by KOMPRESSOR_BROKER__URL and
KOMPRESSOR_STORAGE__*, or the test bed's RabbitMQ and SeaweedFS started in a temp dir.

`Broker` and `Storage` have what tests.jobs needs of the test fixtures (`url`; `client()`, `env()`),
and the pid of a test bed service for CPU accounting (bench/proc.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Broker:
    """A RabbitMQ URL, and its pid when the test bed started it."""

    url: str
    pid: int | None = None


@dataclass
class Storage:
    """An S3 endpoint and its credentials, and its pid when the test bed started it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    pid: int | None = None

    def env(self) -> dict[str, str]:
        return {
            "KOMPRESSOR_STORAGE__ENDPOINT_URL": self.endpoint_url,
            "KOMPRESSOR_STORAGE__ACCESS_KEY_ID": self.access_key,
            "KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY": self.secret_key,
            "KOMPRESSOR_STORAGE__REGION": self.region,
        }

    def settings(self):
        from kompressor.settings import StorageSettings

        return StorageSettings.model_validate(
            {
                "endpoint_url": self.endpoint_url,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
                "region": self.region,
            }
        )

    def client(self):
        """The product's S3 client (kompressor_s3), as the operator and the worker build it."""
        from kompressor_s3 import s3_client

        return s3_client(self.settings())


@dataclass
class Services:
    """A broker and an S3 server, with what to stop afterwards."""

    broker: Broker
    storage: Storage
    source: str  # "testbed" or "environment"
    startup_seconds: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None
    filer_url: str | None = None  # the test bed's SeaweedFS filer (fast bulk uploads)
    stoppers: list = field(default_factory=list)

    @property
    def broker_url(self) -> str:
        return self.broker.url

    @property
    def pids(self) -> dict[str, int]:
        """Test bed service processes by name, for CPU accounting."""
        named = {"rabbitmq": self.broker.pid, "s3": self.storage.pid}
        return {name: pid for name, pid in named.items() if pid is not None}

    def storage_settings(self):
        return self.storage.settings()

    def s3_client(self, pool: int = 10):
        """A plain boto3 client with `pool` connections (for threaded uploads)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.storage.endpoint_url,
            region_name=self.storage.region,
            aws_access_key_id=self.storage.access_key or None,
            aws_secret_access_key=self.storage.secret_key or None,
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                s3={"addressing_style": "path"},
                max_pool_connections=pool,
            ),
        )

    def operator_settings(self):
        from kompressor_operator.settings import OperatorSettings

        return OperatorSettings.model_validate(
            {"broker": {"url": self.broker_url}, "storage": self.storage_settings().model_dump()}
        )

    def stop(self, keep: bool) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as exc:  # a bench must not hide its figures behind a teardown error
                print(f"warning: stopping a service failed: {exc}", file=sys.stderr)
        if self.run_dir is not None and not keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _start_retrying(start, path: Path, attempts: int = 3):
    """The test bed picks free ports by binding and releasing them, so a port can be taken again
    before the service binds it (seen with SeaweedFS's gRPC ports): try again with new ports."""
    for attempt in range(attempts):
        try:
            return start(path)
        except (RuntimeError, TimeoutError) as exc:
            if attempt == attempts - 1:
                raise
            print(f"retrying {start.__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
    raise AssertionError("unreachable")


def _storage_from_environment(endpoint: str) -> Storage:
    env = os.environ
    return Storage(
        endpoint,
        env.get("KOMPRESSOR_STORAGE__ACCESS_KEY_ID", ""),
        env.get("KOMPRESSOR_STORAGE__SECRET_ACCESS_KEY", ""),
        env.get("KOMPRESSOR_STORAGE__REGION", "us-east-1"),
    )


def start(run_dir: Path | None = None) -> Services:
    """The services named in the environment, else the test bed's (in `run_dir` or a temp dir).
    Stop them with `Services.stop`; on a failed start what started is stopped and the logs kept."""
    external_broker = os.environ.get("KOMPRESSOR_BROKER__URL")
    external_s3 = os.environ.get("KOMPRESSOR_STORAGE__ENDPOINT_URL")
    if external_broker and external_s3:
        return Services(Broker(external_broker), _storage_from_environment(external_s3), "environment")
    from testbed import start_rabbitmq, start_s3

    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="kompressor-bench-"))
    found = Services(Broker(""), Storage("", "", "", ""), "testbed", run_dir=run_dir)
    try:
        if external_broker:
            found.broker = Broker(external_broker)
        else:
            started = time.monotonic()
            rabbitmq = _start_retrying(start_rabbitmq, run_dir / "rabbitmq")
            found.stoppers.append(rabbitmq.stop)
            found.startup_seconds["rabbitmq"] = round(time.monotonic() - started, 2)
            process = rabbitmq.service.process
            found.broker = Broker(rabbitmq.url, process.pid if process is not None else None)
        if external_s3:
            found.storage = _storage_from_environment(external_s3)
        else:
            started = time.monotonic()
            s3 = _start_retrying(start_s3, run_dir / "s3")
            found.stoppers.append(s3.stop)
            found.startup_seconds["s3"] = round(time.monotonic() - started, 2)
            process = s3.service.process
            pid = process.pid if process is not None else None
            found.storage = Storage(s3.endpoint_url, s3.access_key, s3.secret_key, s3.region, pid)
            filer = [arg.split("=", 1)[1] for arg in s3.service.argv if arg.startswith("-filer.port=")]
            found.filer_url = f"http://127.0.0.1:{filer[0]}" if filer else None
    except BaseException:
        found.stop(keep=True)
        print(f"service start-up failed; logs in {run_dir}", file=sys.stderr)
        raise
    return found


@contextlib.contextmanager
def running(keep: bool = False) -> Iterator[Services]:
    """`start`, stopped (and the temp dir removed unless `keep`) when the block ends."""
    found = start()
    try:
        yield found
    finally:
        found.stop(keep)


def put_empty_objects(
    found: Services, bucket: str, keys: Sequence[str], threads: int = 64
) -> tuple[float, str]:
    """Create the bucket and an empty object at each key; returns (seconds, how). Through the test
    bed's SeaweedFS filer when there is one (~2,000 objects/s here; boto3's put_object costs ~2.5 ms
    of client CPU each), else with boto3."""
    import concurrent.futures
    import http.client
    import threading
    import urllib.parse

    client = found.s3_client(pool=threads)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    started = time.monotonic()
    if found.filer_url:
        parsed = urllib.parse.urlsplit(found.filer_url)
        local = threading.local()

        def put(key: str) -> None:
            connection = getattr(local, "connection", None)
            if connection is None:
                connection = local.connection = http.client.HTTPConnection(parsed.hostname, parsed.port)
            connection.request("PUT", f"/buckets/{bucket}/{urllib.parse.quote(key)}", body=b"")
            response = connection.getresponse()
            response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"filer PUT {key}: HTTP {response.status}")

        how = f"SeaweedFS filer PUT, {threads} threads"
    else:

        def put(key: str) -> None:
            client.put_object(Bucket=bucket, Key=key, Body=b"")

        how = f"boto3 put_object, {threads} threads"
    with concurrent.futures.ThreadPoolExecutor(threads) as executor:
        list(executor.map(put, keys))
    return time.monotonic() - started, how
