"""The deployment files: the Dockerfile's install and start commands work in a
clean virtualenv (no container engine here), the compose file hangs
together, and every alert rule is well formed and names real metrics."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from genjobs.server.runtime.embedded import free_port
from genjobs.server.telemetry import metrics
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def env_of(arguments: str) -> dict[str, str]:
    """An ENV instruction's variables (KEY=VALUE form)."""
    return dict(part.split("=", 1) for part in shlex.split(arguments))


def exec_form(arguments: str) -> list[str]:
    parsed = yaml.safe_load(arguments)  # a JSON array is YAML too
    assert isinstance(parsed, list), f"use the exec form: {arguments}"
    return [str(part) for part in parsed]


@pytest.mark.timeout(900)
def test_dockerfile_installs_and_starts_in_a_clean_virtualenv(tmp_path: Path) -> None:
    lines = dockerfile()
    assert lines[0][0] == "FROM" and "python:3.11" in lines[0][1]
    # The image's /app: exactly what the COPY lines bring in (a missing file fails the install).
    app = tmp_path / "app"
    app.mkdir()
    for instruction, arguments in lines:
        if instruction == "COPY":
            *sources, target = arguments.split()
            for source in sources:
                destination = app / (target if target not in ("./", ".") else source)
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:
                    shutil.copy(ROOT / source, app / source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    # HOME kept: pip's configuration and cache are the machine's; the environment is otherwise bare.
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path))}
    installs = [
        arguments for instruction, arguments in lines if instruction == "RUN" and "pip install" in arguments
    ]
    assert installs, "no pip install in the Dockerfile"
    for command in installs:
        # The image's python is the venv's here; the pip cache may serve (the image disables it).
        subprocess.run(
            command, shell=True, cwd=app, env={**environment, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    # Every RUN is either the install or the non-root user (not made on this machine).
    others = [a for i, a in lines if i == "RUN" and "pip install" not in a]
    assert all(a.startswith("useradd") for a in others), others
    assert any(i == "USER" and a != "root" for i, a in lines)

    image_env: dict[str, str] = {}
    for instruction, arguments in lines:
        if instruction == "ENV":
            image_env.update(env_of(arguments))
    assert image_env["GENJOBS_HOST"] == "0.0.0.0" and "GENJOBS_MONGODB_URI" not in image_env  # embedded
    grpc_port, metrics_port = free_port(), free_port()
    run_env = {
        **environment,
        **image_env,
        # Loopback only on this machine, free ports, a data dir of its own.
        "GENJOBS_HOST": "127.0.0.1",
        "GENJOBS_PORT": str(grpc_port),
        "GENJOBS_METRICS_PORT": str(metrics_port),
        "GENJOBS_DATA_DIR": str(tmp_path / "data"),
    }
    command = exec_form(next(a for i, a in lines if i == "CMD"))
    probe = exec_form(next(a for i, a in lines if i == "HEALTHCHECK").partition("CMD")[2])
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(command, cwd=tmp_path, env=run_env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            return subprocess.run(probe, env=run_env, cwd=tmp_path, timeout=30).returncode == 0

        wait_for(healthy, timeout=120, interval=0.5)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "genjobs_dispatcher_leader 1.0" in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
        log.close()
    assert code == 0, (tmp_path / "server.log").read_text()
    assert subprocess.run(probe, env=run_env, cwd=tmp_path, timeout=30).returncode == 1  # nothing serving


def test_compose_runs_two_replicas_on_a_replica_set() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    replicas = {name: s for name, s in services.items() if s.get("build")}
    assert len(replicas) == 2
    uris = {s["environment"]["GENJOBS_MONGODB_URI"] for s in replicas.values()}
    assert len(uris) == 1 and "replicaSet=rs0" in uris.pop()
    for service in replicas.values():
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
            ROOT / "Dockerfile"
        )
        grace = float(service["environment"]["GENJOBS_SHUTDOWN_GRACE_SECONDS"])
        assert float(service["stop_grace_period"].rstrip("s")) > grace  # SIGKILL comes after the grace
    members = [name for name, s in services.items() if "--replSet" in s.get("command", [])]
    assert len(members) == 3
    assert (DEPLOY / compose["configs"]["alerts"]["file"]).resolve() == DEPLOY / "alerts.yml"


def _exposed_names() -> dict[str, set[str]]:
    """Every series name the module's metrics expose, with the labels each takes."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    names: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for suffix in suffixes[metric._type]:
                extra = {"le"} if suffix == "_bucket" else set()
                names[metric._name + suffix] = set(metric._labelnames) | extra
    return names


def test_alert_rules_are_well_formed_and_name_real_metrics() -> None:
    exposed = _exposed_names()
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    checked = 0
    for group in rules["groups"]:
        assert group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert re.fullmatch(r"\d+[smhd]", rule["for"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            expr = rule["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            for name, selector in re.findall(r"\b(genjobs_\w+)(\{[^}]*\})?", expr):
                assert name in exposed, f"{rule['alert']}: no metric {name}"
                for label in re.findall(r"(\w+)\s*=~?", selector):
                    assert label in exposed[name], f"{rule['alert']}: {name} has no label {label}"
            others = set(re.findall(r"\b([a-z_]+)\{", expr)) - set(exposed)
            assert others <= {"up"}, others  # Prometheus' own series
            checked += 1
    assert checked >= 6


def test_the_registry_exposes_every_metric_the_issue_names() -> None:
    body, _ = metrics.exposition()
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    wanted = {
        "genjobs_jobs_submitted": "counter",
        "genjobs_jobs_finished": "counter",
        "genjobs_job_attempts": "counter",
        "genjobs_job_failures": "counter",
        "genjobs_queue_depth": "gauge",
        "genjobs_jobs_running": "gauge",
        "genjobs_job_wait_seconds": "histogram",
        "genjobs_job_run_seconds": "histogram",
        "genjobs_generator_cost_cents": "counter",
        "genjobs_rpc_handled": "counter",
        "genjobs_rpc_duration_seconds": "histogram",
        "genjobs_streams_open": "gauge",
        "genjobs_dispatcher_leader": "gauge",
        "genjobs_webhook_deliveries": "counter",
    }
    assert {name: families.get(name) for name in wanted} == wanted
