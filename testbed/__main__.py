"""`python -m testbed up`: start the test bed's services for a person, print how to reach them,
and stop them on Ctrl-C. `--only rabbitmq,s3` starts a subset (the Kubernetes build takes minutes
the first time). `node` adds a real node (testbed/node.py; needs root): then every service listens
on the node's bridge gateway instead of 127.0.0.1, so that its pods reach them."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from testbed import start_kube, start_rabbitmq, start_s3
from testbed.node import claim_bridge, start_node

SERVICES = ("rabbitmq", "s3", "kube", "node")
DEFAULT = ("rabbitmq", "s3", "kube")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("command", choices=["up"])
    parser.add_argument(
        "--only", default=",".join(DEFAULT), help="comma-separated: rabbitmq,s3,kube,node (node implies kube)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="run directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    if "node" in wanted and "kube" not in wanted:
        wanted.append("kube")
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="kompressor-testbed-"))

    started, env = [], {}
    host = "127.0.0.1"
    try:
        if "node" in wanted:
            bridge = claim_bridge()
            started.append(bridge)
            host = bridge.gateway
            print(f"node bridge {bridge.name} on {bridge.subnet}, gateway {host}", file=sys.stderr)
        if "rabbitmq" in wanted:
            t0 = time.monotonic()
            broker = start_rabbitmq(run_dir / "rabbitmq", host=host)
            started.append(broker)
            env["KOMPRESSOR_BROKER__URL"] = broker.url
            print(f"rabbitmq ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if "s3" in wanted:
            t0 = time.monotonic()
            s3 = start_s3(run_dir / "s3", host=host)
            started.append(s3)
            env.update(s3.env())
            print(f"s3 ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if "kube" in wanted:
            t0 = time.monotonic()
            kube = start_kube(run_dir / "kube", address=host)
            started.append(kube)
            env["KUBECONFIG"] = str(kube.kubeconfig_path)
            print(f"kube ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if "node" in wanted:
            t0 = time.monotonic()
            node = start_node(kube, bridge, run_dir / "node")
            started.append(node)
            print(
                f"node ready in {time.monotonic() - t0:.1f}s: `kubectl get nodes` shows it; "
                f"its images are {', '.join(node.images)}",
                file=sys.stderr,
            )
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
