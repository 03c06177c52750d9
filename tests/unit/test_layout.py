"""The packaging layout: three import packages, no shadowing of the standard library, layers kept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_packages_import_from_the_repository_root_without_shadowing_the_stdlib():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import collections, operator, kompressor, kompressor_operator, "
            "kompressor_worker; assert hasattr(operator, 'itemgetter')",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint) if lint.exists() else "lint-imports"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken\.", result.stdout), result.stdout


def test_kompressor_crd_prints_the_generated_definition():
    import yaml

    from kompressor.crd import crd

    result = subprocess.run(
        [sys.executable, "-m", "kompressor_operator.cli", "crd"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert yaml.safe_load(result.stdout) == crd()


def test_the_license_file_is_the_apache_license_pyproject_and_the_image_labels_name():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "Apache-2.0"
    for dockerfile in ("Dockerfile.operator", "Dockerfile.worker"):
        assert f'org.opencontainers.image.licenses="{declared}"' in (ROOT / dockerfile).read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it
