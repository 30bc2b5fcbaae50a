"""genjobs-client, the distribution built from client/: a Python service
installs the typed client, the CLI and the stubs without the server's
dependencies (issue 28)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ServerThread

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("pymongo", "starlette", "uvicorn", "openai", "opentelemetry", "nx_27017", "croniter")


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with only `pip install ./client` in it."""
    scratch = tmp_path_factory.mktemp("client-venv")
    # Built from a copy: pip builds in the source folder, and its build/ and
    # egg-info must not land in the checkout.
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for folder in ("client", "protos"):
        shutil.copytree(ROOT / folder, scratch / "src" / folder, ignore=ignore)
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(scratch / "src" / "client"),
        ],
        check=True,
        timeout=600,
        cwd=venv.parent,  # not the checkout: its folders must not shadow the installed package
    )
    return venv


def _run(venv: Path, *args: str, token: str = "", target: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENJOBS_", "PYTHON"))}
    env.update(GENJOBS_TOKEN=token, GENJOBS_TARGET=target, NO_COLOR="1", COLUMNS="200")
    return subprocess.run(
        [str(venv / "bin" / "genjobs"), *args],
        env=env,
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_client_distribution_brings_none_of_the_servers_dependencies(client_venv: Path) -> None:
    listed = subprocess.run(
        [str(client_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    names = {line.split("==")[0].replace("-", "_") for line in listed.splitlines()}
    assert "genjobs_client" in names and "grpcio" in names
    assert not names & {
        "pymongo",
        "starlette",
        "uvicorn",
        "openai",
        "croniter",
        "aiosmtplib",
        "prometheus_client",
    }
    assert not any(name.startswith("opentelemetry") for name in names)
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in sys.argv[1:]))"
    found = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", probe, *SERVER_ONLY], cwd=client_venv.parent
    )
    assert found.returncode == 0, "a server dependency is importable in the client's venv"


def test_the_installed_cli_answers_help_and_calls_a_running_server(
    client_venv: Path, server: ServerThread
) -> None:
    help_text = _run(client_venv, "--help")
    assert help_text.returncode == 0 and "submit" in help_text.stdout

    target, token = f"localhost:{server.port}", server.token("carol")
    submitted = _run(
        client_venv,
        "submit",
        "--topic",
        "Packaging Python services",
        "-o",
        "json",
        token=token,
        target=target,
    )
    assert submitted.returncode == 0, submitted.stderr
    listed = _run(client_venv, "ls", "-o", "json", token=token, target=target)
    assert listed.returncode == 0, listed.stderr
    assert "Packaging Python services" in listed.stdout


def test_the_typed_client_imports_alone(client_venv: Path, server: ServerThread) -> None:
    script = (
        "import sys; from genjobs.client import GenJobsClient\n"
        "with GenJobsClient(sys.argv[1], token=sys.argv[2]) as c:\n"
        "    print(c.submit('topic', topic='From a service').id)\n"
    )
    answer = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", script, f"localhost:{server.port}", server.token("dave")],
        cwd=client_venv.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
