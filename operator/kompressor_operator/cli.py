"""The `kompressor` command: `kompressor crd` prints the CustomResourceDefinition."""

from __future__ import annotations

import argparse
import sys

import yaml

from kompressor.crd import crd


def render_crd() -> str:
    return yaml.safe_dump(crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kompressor", description="Kubernetes-native image compression.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("crd", help="print the CompressionJob CustomResourceDefinition as YAML")
    args = parser.parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(render_crd())
    return 0


if __name__ == "__main__":
    sys.exit(main())
