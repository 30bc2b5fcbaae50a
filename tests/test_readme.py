"""Every grpcurl, curl and genjobs command in the README and in the pages under
docs/, run against a live server with the real grpcurl binary, so that a change
to a page that breaks one fails; and every page under docs/ linked from the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from genjobs.client import GenJobsClient
from genjobs.server.api.http.transcode import routes
from genjobs.v1 import bulk_pb2, jobs_pb2, schedules_pb2, templates_pb2
from tests.harness import SECRET, ServerThread, wait_for
from tests.test_cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"<[a-z ]+ (?:id|name)>")
SERVICES = [
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
    bulk_pb2.DESCRIPTOR.services_by_name["BulkService"],
    schedules_pb2.DESCRIPTOR.services_by_name["ScheduleService"],
    templates_pb2.DESCRIPTOR.services_by_name["TemplateService"],
]
WEEKLY = jobs_pb2.SubmitJobRequest(mode=jobs_pb2.MODE_TOPIC, params=jobs_pb2.GenerationParams(topic="t"))
FINAL = (jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED)


def pages() -> list[Path]:
    """The README, then every page under docs/, in the order their commands run."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_blocks() -> list[list[str]]:
    """The commands of each ```sh block of every page, continuation lines and multi-line quotes joined."""
    blocks: list[list[str]] = []
    for page in pages():
        blocks += page_blocks(page)
    return blocks


def page_blocks(page: Path) -> list[list[str]]:
    """The commands of each ```sh block of one page."""
    blocks, current, inside = [], [], False
    pending = ""
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh" and not inside
            if not inside and current:
                blocks.append(current)
            current = []
            continue
        if not inside:
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\") or pending.count("'") % 2:
            continue  # the command goes on on the next line
        current.append(pending)
        pending = ""
    return blocks


def commands() -> Iterator[tuple[int, str]]:
    """(block number, command) for every command the README and docs/ ask a user to run."""
    for number, block in enumerate(readme_blocks()):
        for command in block:
            if command.startswith(("grpcurl", "genjobs", "export", "AUTH=", "curl")):
                yield number, command


def test_the_readme_shows_every_rpc_and_command() -> None:
    text = "\n".join(c for _, c in commands())
    for service in SERVICES:
        for rpc in service.methods_by_name:
            assert f"{service.name}/{rpc}" in text
    assert all(f"genjobs {command}" in text for command in COMMANDS)
    curls = [c for _, c in commands() if c.startswith("curl")]
    for route in routes(SERVICES):  # every HTTP route, its ids as placeholders
        path = re.sub(r"\\\{[a-z_]+\\\}", lambda _: PLACEHOLDER.pattern, re.escape(route.template))
        assert any(re.search(f"localhost:8080{path}(?=[?'\\s]|$)", c) for c in curls), route.template


def test_the_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [page.name for page in pages()[1:] if f"](docs/{page.name})" not in readme]
    assert unlinked == []


class Ids:
    """Jobs and bulk jobs in the state each README placeholder stands for."""

    def __init__(self, client: GenJobsClient) -> None:
        self.client = client
        self.made: dict[str, str] = {}
        self.blockers: list[str] = []
        self.makers: dict[str, Callable[[], str]] = {
            "<job id>": lambda: self._final(client.submit("topic", topic="Green tea").id),
            "<finished job id>": lambda: self._final(client.submit("topic", topic="done").id),
            "<failed job id>": lambda: self._final(
                client.submit("topic", topic="broken", extra={"demo_fail": "permanent"}).id
            ),
            "<queued job id>": self._queued,
            "<bulk id>": self._bulk,
            "<schedule id>": lambda: client.create_schedule("0 9 * * 1", job=WEEKLY).id,
            "<template name>": lambda: client.create_template(f"readme-{len(self.made)}", job=WEEKLY).name,
            "<running bulk id>": lambda: (
                client.create_bulk(
                    "topic", [{"topic": "long", "extra": {"demo_seconds": "30"}}, *self._items(9)]
                ).id
            ),
        }

    def fill(self, command: str) -> str:
        """The command with its placeholders replaced, each made on first use."""
        for placeholder in set(PLACEHOLDER.findall(command)):
            if placeholder not in self.made:
                self.made[placeholder] = self.makers[placeholder]()
            command = command.replace(placeholder, self.made[placeholder])
        return command

    def release(self) -> None:
        """Stop the job kept running for a queued placeholder, so later steps need not wait."""
        for job_id in self.blockers:
            self.client.cancel(job_id)
        self.blockers.clear()

    def _final(self, job_id: str) -> str:
        wait_for(lambda: self.client.get(job_id).status in FINAL, timeout=20)
        return job_id

    def _queued(self) -> str:
        blocker = self.client.submit("topic", topic="keeps the dispatcher busy", extra={"demo_seconds": "30"})
        self.blockers.append(blocker.id)
        return self.client.submit("topic", topic="waits its turn").id

    @staticmethod
    def _items(count: int) -> list[dict[str, object]]:
        return [{"topic": f"item {i}", "word_count": 60} for i in range(count)]

    def _bulk(self) -> str:
        items = self._items(10)
        items[2]["extra"] = {"demo_fail": "permanent"}
        bulk = self.client.create_bulk("topic", items)
        wait_for(lambda: self.client.get_bulk(bulk.id).remaining_items == 0, timeout=30)
        return bulk.id


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    lines = ["topic,keywords,word_count"] + [f"Launch article {i},launch;product,80" for i in range(10)]
    (tmp_path / "items.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.timeout(300)  # some 90 commands, each a process: a loaded 2-core box takes a while
def test_every_readme_command_runs(server: ServerThread, workdir: Path) -> None:
    token = server.token("dev")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GENJOBS_TOKEN": token,
        "GENJOBS_TARGET": server.target,
        "GENJOBS_AUTH_SECRET": SECRET,
        "AUTH": f"authorization: Bearer {token}",
        "COLUMNS": "200",
    }
    assert server.app is not None
    http_port = server.app.http_port
    ran = 0
    with server.client("dev") as client:
        # Fresh jobs for each block, so that its steps follow each other.
        for number in sorted({n for n, _ in commands()}):
            block = [c for n, c in commands() if n == number]
            ids = Ids(client)
            for command in block:
                line = ids.fill(command).replace("localhost:50051", server.target)
                line = line.replace("localhost:8080", f"127.0.0.1:{http_port}")
                # An HTTP error status fails the step (curl alone would exit 0).
                line = re.sub(r"^curl ", "curl --fail-with-body ", line)
                done = subprocess.run(
                    ["bash", "-c", line], env=env, cwd=workdir, capture_output=True, text=True, timeout=90
                )
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                ids.release()
                ran += 1
    assert ran >= 40
