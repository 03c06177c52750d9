"""The `kompressor` command: `run` a CompressionJob on this machine, print the `crd` or its `reference`,
or the `srcset` markup of one source from a job's renditions index."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import yaml

from kompressor import __version__
from kompressor.crd import crd
from kompressor.reference import reference

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def render_crd() -> str:
    """The CompressionJob CRD as YAML (`kompressor crd`)."""
    return yaml.safe_dump(crd(), sort_keys=False, width=100)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    from kompressor.crd import Phase
    from kompressor_operator import local, progress

    # SIGTERM stops the workers as Ctrl-C does: they run in sessions of their own and would
    # otherwise go on consuming after we are gone.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        settings = local.settings_from_environment()
        job_file = local.load_job_file(Path(args.job), settings.allowed_input_formats)
        if args.dry_run:
            return _dry_run(job_file, settings, args.json)
        console = progress.console(stderr=True)
        with progress.LiveProgress(console, job_file.name, enabled=not args.json) as live:
            run = local.run_job(
                job_file,
                settings,
                on_update=live.update,
                log_dir=Path(args.log_dir) if args.log_dir else None,
            )
    except local.ConfigError as exc:
        print(f"kompressor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("kompressor: interrupted; workers stopped, the job's queues are kept", file=sys.stderr)
        return 130
    if args.json:
        print(local.status_json(run.status))
    else:
        progress.print_summary(progress.console(), job_file.name, run)
    return EXIT_SUCCEEDED if run.status.phase is Phase.succeeded else EXIT_FAILED


def _dry_run(job_file, settings, as_json: bool) -> int:
    from kompressor_operator import local, progress

    plan = local.dry_run(job_file, settings)
    if as_json:
        figures = plan.estimate
        print(
            json.dumps(
                {
                    "inputs": figures.inputs,
                    "bytes": figures.bytes,
                    "unknownSizes": figures.unknown_sizes,
                    "estimatedCpuSeconds": round(figures.cpu_seconds, 1),
                    "processes": plan.processes,
                    "estimatedSeconds": round(figures.seconds(plan.processes), 1),
                    "first": [
                        {
                            "source": t.source.describe(),
                            "dest": [f"s3://{t.dest_bucket}/{key}" for key in t.dest_keys()]
                            if t.renditions
                            else f"s3://{t.dest_bucket}/{t.dest_key}",
                        }
                        for t in plan.first
                    ],
                },
                indent=2,
            )
        )
    else:
        progress.print_dry_run(progress.console(), job_file.name, plan)
    return EXIT_SUCCEEDED


def _srcset(args: argparse.Namespace) -> int:
    from kompressor import index

    text = sys.stdin.read() if args.index == "-" else Path(args.index).read_text()
    stored = index.lookup(text, args.source)
    if not stored:
        print(f"kompressor: {args.source} has no stored renditions in {args.index}", file=sys.stderr)
        return EXIT_FAILED
    name = args.rendition or next(iter(stored))
    if name not in stored:
        print(
            f"kompressor: {args.source} has no rendition {name}; it has {', '.join(stored)}", file=sys.stderr
        )
        return EXIT_FAILED
    print(index.picture(stored, name, base_url=args.base_url, sizes=args.sizes, alt=args.alt))
    return EXIT_SUCCEEDED


def main(argv: list[str] | None = None) -> int:
    """The `kompressor` command: `crd`, `reference`, `run` (local mode); returns the exit code."""
    parser = argparse.ArgumentParser(prog="kompressor", description="Kubernetes-native image compression.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("crd", help="print the CompressionJob CustomResourceDefinition as YAML")
    commands.add_parser("reference", help="print the CompressionJob field reference (docs/reference.md)")
    run = commands.add_parser(
        "run",
        help="run a CompressionJob on this machine (RabbitMQ and S3 from KOMPRESSOR_* variables)",
        description="Exit codes: 0 the job Succeeded (or the dry run listed it), 1 it Failed, "
        "2 a configuration error.",
    )
    run.add_argument("job", help="a CompressionJob YAML file")
    run.add_argument("--json", action="store_true", help="print the final status (or the dry run) as JSON")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list the inputs and estimate the time; publish, declare and write nothing",
    )
    run.add_argument("--log-dir", help="where worker logs go (default: a new temporary directory)")
    srcset = commands.add_parser(
        "srcset",
        help="print the <picture> element of one source from a job's index.json or manifest.jsonl",
    )
    srcset.add_argument("index", help="a downloaded index.json or manifest.jsonl ('-': standard input)")
    srcset.add_argument("source", help="the source's S3 key (or URL, for URL sources)")
    srcset.add_argument("--rendition", help="the rendition's name (default: the first of the job's)")
    srcset.add_argument("--base-url", default="", help="put before each key, e.g. https://cdn.example/")
    srcset.add_argument("--sizes", default="100vw", help="the sizes attribute (default 100vw)")
    srcset.add_argument("--alt", default="", help="the img's alt text")
    args = parser.parse_args(argv)
    if args.command == "srcset":
        return _srcset(args)
    if args.command == "crd":
        sys.stdout.write(render_crd())
        return 0
    if args.command == "reference":
        sys.stdout.write(reference())
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
