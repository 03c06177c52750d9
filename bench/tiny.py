"""Per-task overhead end to end: `kompressor run` on many tiny images, where the encode is nearly free.

10,000 distinct 64x64 JPEGs (noise, ~2-3 KB each) to JPEG q80, one worker with 2 processes
(`maxReplicas: 1`, `processesPerPod: 2`), on the test bed's RabbitMQ and SeaweedFS. Reports tasks
per second (inputs / seconds from `kompressor run` to its exit, listing and manifest included) and
the engine's peak RSS (VmHWM of the `kompressor run` process). With `--baseline DIR` (a source tree,
e.g. `git archive` of an older commit) runs alternate between it and the installed code (its
packages go first on PYTHONPATH, for the engine and the workers it starts), each into a new prefix.

    python bench/tiny.py --images 10000 --repeat 2 --baseline /tmp/kompressor-before

Prints one line per run and the medians; writes bench/results/tiny.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import describe_machine, machine  # noqa: E402

from testbed import start_rabbitmq, start_s3  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "tiny.json"


def tiny_jpeg(seed: int) -> bytes:
    image = Image.frombytes("RGB", (64, 64), seed.to_bytes(4, "big") * (64 * 64 * 3 // 4))
    noise = Image.effect_noise((64, 64), 40 + seed % 20).convert("RGB")
    out = io.BytesIO()
    Image.blend(image, noise, 0.5).save(out, "JPEG", quality=90)
    return out.getvalue()


def upload(client, bucket: str, count: int) -> float:
    started = time.monotonic()

    def put(index: int) -> None:
        client.put_object(Bucket=bucket, Key=f"in/{index // 1000:03d}/{index:06d}.jpg", Body=tiny_jpeg(index))

    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        list(executor.map(put, range(count)))
    return time.monotonic() - started


def job(bucket: str, dest_prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "kompressor.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "source": {"s3": {"bucket": bucket, "prefix": "in/"}},
            "destination": {"s3": {"bucket": bucket, "prefix": dest_prefix}},
            "output": {"format": "jpeg", "quality": 80, "neverLarger": False},
            "workers": {"maxReplicas": 1, "processesPerPod": 2},
        },
    }


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_once(env: dict[str, str], spec: dict[str, Any], work: Path, source: Path | None) -> dict[str, Any]:
    work.mkdir(parents=True)
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = dict(env)
    if source is not None:
        # The tree's three packages: its engine (operator/), its workers and the contract.
        env["PYTHONPATH"] = os.pathsep.join([str(source / d) for d in ("worker", "operator", ".")])
    command = [sys.executable, "-m", "kompressor_operator.cli", "run", str(path), "--json"]
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, "--log-dir", str(work / "logs")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=source or work,
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, _peak_rss(process.pid))
        time.sleep(0.2)
    seconds = time.monotonic() - started
    out = process.stdout.read() if process.stdout else ""
    status = json.loads(out) if out.strip() else {}
    return {
        "exit": process.returncode,
        "seconds": round(seconds, 2),
        "tasks_per_second": round(status.get("total", 0) / seconds, 1),
        "engine_peak_rss_mb": round(peak / 2**20, 1),
        "counts": {k: status.get(k) for k in ("phase", "total", "succeeded", "failed", "skipped")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline", type=Path, default=None, help="source tree to compare with")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    run_dir = Path(tempfile.mkdtemp(prefix="kompressor-tiny-"))
    rabbitmq = start_rabbitmq(run_dir / "rabbitmq")
    s3 = start_s3(run_dir / "s3")
    report: dict[str, Any] = {"benchmark": "tiny", "machine": machine(), "images": args.images, "runs": []}
    try:
        client = s3.client()
        bucket = f"tiny-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        print(
            f"{args.images} images uploaded in {upload(client, bucket, args.images):.0f} s", file=sys.stderr
        )
        env = {**os.environ, "KOMPRESSOR_BROKER__URL": rabbitmq.url, **s3.env()}
        variants: list[tuple[str, Path | None]] = [("current", None)]
        if args.baseline is not None:
            variants.append(("baseline", args.baseline.resolve()))
        for repeat in range(args.repeat):
            for variant, source in variants if repeat % 2 == 0 else variants[::-1]:
                name = f"{variant}-{repeat}"
                run = run_once(env, job(bucket, f"out-{name}/"), run_dir / name, source)
                report["runs"].append({"variant": variant, "repeat": repeat, **run})
                print(f"{name}: {run}", file=sys.stderr)
    finally:
        s3.stop()
        rabbitmq.stop()
    report["summary"] = {
        variant: {
            key: statistics.median(run[key] for run in report["runs"] if run["variant"] == variant)
            for key in ("tasks_per_second", "seconds", "engine_peak_rss_mb")
        }
        for variant, _ in variants
    }
    print(f"{describe_machine(report['machine'])}; {args.images} tiny images, medians:")
    for variant, summary in report["summary"].items():
        print(f"  {variant}: {summary}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
