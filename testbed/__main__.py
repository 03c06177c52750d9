"""`python -m testbed up`: start the test bed's services for a person, print how to reach them,
and stop them on Ctrl-C. `--only rabbitmq,s3` starts a subset (the Kubernetes build takes minutes
the first time)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from testbed import start_kube, start_rabbitmq, start_s3

SERVICES = ("rabbitmq", "s3", "kube")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--only", default=",".join(SERVICES), help="comma-separated: rabbitmq,s3,kube")
    parser.add_argument("--dir", type=Path, default=None, help="run directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="kompressor-testbed-"))

    started, env = [], {}
    try:
        if "rabbitmq" in wanted:
            t0 = time.monotonic()
            broker = start_rabbitmq(run_dir / "rabbitmq")
            started.append(broker)
            env["KOMPRESSOR_BROKER__URL"] = broker.url
            print(f"rabbitmq ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if "s3" in wanted:
            t0 = time.monotonic()
            s3 = start_s3(run_dir / "s3")
            started.append(s3)
            env.update(s3.env())
            print(f"s3 ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if "kube" in wanted:
            t0 = time.monotonic()
            kube = start_kube(run_dir / "kube")
            started.append(kube)
            env["KUBECONFIG"] = str(kube.kubeconfig_path)
            print(f"kube ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        print(f"# logs and data in {run_dir}; Ctrl-C stops everything", file=sys.stderr)
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for service in reversed(started):
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
