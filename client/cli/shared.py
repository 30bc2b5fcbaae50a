"""What the command groups share: the global options, the enums and the flags
several groups take, the connection that makes any RPC error one line and exit 1,
and printing a result as a table or JSON."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from rich.console import Console

from genjobs.client import render, visible
from genjobs.client.client import (
    FailedPrecondition,
    GenJobsClient,
    GenJobsError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from genjobs.v1 import jobs_pb2

DEFAULT_TARGET = "localhost:50051"
LOCAL_USER = "dev"


class Output(StrEnum):
    """How results are printed."""

    table = "table"
    json = "json"


class Mode(StrEnum):
    """What the generator writes."""

    topic = "topic"
    keywords = "keywords"
    trends = "trends"
    spin = "spin"


class Priority(StrEnum):
    """Which jobs run first: high (premium tokens and admins), normal, low."""

    low = "low"
    normal = "normal"
    high = "high"


PriorityOpt = Annotated[
    Priority | None,
    typer.Option(
        "--priority",
        "-p",
        metavar="PRIORITY",
        help="low, normal or high (premium or admin tokens) [default: normal]",
    ),
]
AtOpt = Annotated[
    str,
    typer.Option(
        "--at", help="not before this time: ISO 8601 (local time unless it says) or +30s, +5m, +2h, +1d"
    ),
]
_RELATIVE = re.compile(r"\+(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_at(text: str) -> datetime | None:
    """`--at`: "+30s" style (from now) or an ISO 8601 time; None when empty. ValueError when neither."""
    if not text:
        return None
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return datetime.now().astimezone() + timedelta(**{_UNITS[relative[2]]: float(relative[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--at {text!r}: not an ISO 8601 time nor +N followed by s, m, h or d") from None
    return moment if moment.tzinfo else moment.astimezone()


def priority_value(priority: Priority | None) -> int:
    """The protobuf value of a --priority flag; 0 (unspecified) when not given."""
    return jobs_pb2.Priority.Value("PRIORITY_" + priority.value.upper()) if priority else 0


def at_time(opts: Options, text: str) -> datetime | None:
    """`--at` parsed (see parse_at); a bad one is an error line and exit 1."""
    try:
        return parse_at(text)
    except ValueError as exc:
        fail(opts.errors, str(exc))


class JobStatus(StrEnum):
    """A job's status, as a filter."""

    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


@dataclass
class Options:
    """The global flags, shared by every command."""

    target: str
    token: str
    output: Output
    data_dir: Path
    console: Console
    errors: Console
    tls: bool = False
    ca_file: str = ""
    utc: bool = False

    @property
    def json(self) -> bool:
        return self.output == Output.json

    def resolved_token(self) -> str:
        """The token to send: given, or made for `dev` from a local server's secret."""
        if self.token:
            return self.token
        secret = self.data_dir / "auth_secret"
        if secret.is_file():
            try:  # only for a local `make run` server, whose package is installed beside
                from genjobs.server.api.auth import make_token
            except ImportError:
                fail(
                    self.errors,
                    "no token: pass --token or set GENJOBS_TOKEN (genjobs-client alone cannot make one)",
                )
            return make_token(secret.read_text().strip(), LOCAL_USER)
        fail(
            self.errors,
            "no token: pass --token or set GENJOBS_TOKEN "
            "(a server's owner prints one with `genjobs-server token --user NAME`)",
        )


def fail(errors: Console, message: str) -> NoReturn:
    """Print one error line and exit 1."""
    errors.print(f"[red]genjobs: error:[/] {visible.text(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do it without asking")]


def stdin_is_terminal() -> bool:
    """Whether there is someone at a terminal to answer a question."""
    return sys.stdin.isatty()


def confirm(opts: Options, yes: bool, what: str) -> None:
    """Before a command that deletes or cancels: ask "WHAT?" unless --yes. With no
    terminal to ask on (a script, a pipe), refuse with exit 2 naming --yes; a
    "no" is exit 1 with nothing done."""
    if yes:
        return
    if not stdin_is_terminal():
        opts.errors.print(
            f"[red]genjobs: error:[/] this would {visible.text(what)}; "
            "pass --yes to do it without a terminal to ask on",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    if not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True):
        opts.errors.print("nothing done", highlight=False)
        raise typer.Exit(1)


def explain(error: GenJobsError, target: str) -> str:
    """The error line: what went wrong, its reason, and what to do about it."""
    reason = f" [{error.reason}]" if error.reason else ""
    if isinstance(error, Unavailable):
        hint = f"is genjobs running at {target}? (start one with `make run`, or set GENJOBS_TARGET)"
        if error.reason == "DATABASE_UNAVAILABLE":
            hint = "the server cannot reach its database; try again shortly"
        return f"{error.message}{reason}: {hint}"
    if isinstance(error, Unauthenticated):
        return f"{error.message}{reason}: set GENJOBS_TOKEN (`genjobs-server token --user NAME`)"
    if isinstance(error, InvalidArgument) and error.violations:
        return f"invalid request{reason}: {render.violations_text(error.violations)}"
    if isinstance(error, NotFound):
        return f"{error.message}{reason}: check the id with `genjobs ls`"
    if isinstance(error, FailedPrecondition):
        return f"{error.message}{reason}"
    return f"{error.message or error.code.name}{reason}"


@contextmanager
def connected(ctx: typer.Context, raw: bool = False) -> Iterator[GenJobsClient]:
    """A client for the target; any RPC error becomes one error line and exit 1.

    Its answers come with control characters made visible (`visible`), unless
    the output is JSON (which escapes them itself) or `raw` (a file written as stored)."""
    opts: Options = ctx.obj
    try:
        with GenJobsClient(opts.target, opts.resolved_token(), tls=opts.tls, ca_file=opts.ca_file) as client:
            yield client if opts.json or raw else cast(GenJobsClient, visible.VisibleClient(client))
    except GenJobsError as error:
        fail(opts.errors, explain(error, opts.target))


def print_result(opts: Options, data: Any, table: Any = None) -> None:
    """A command's result: `data` as JSON with -o json, else `table` (if any)."""
    if opts.json:
        render.print_json(opts.console, data)
    elif table is not None:
        opts.console.print(table)


def print_estimate(opts: Options, made: Any, what: str) -> None:
    """A --dry-run's answer (a Job or BulkJob with its estimate): JSON with -o
    json, else one line: what would be queued and what it would cost and take."""
    if opts.json:
        render.print_json(opts.console, render.as_dict(made))
    else:
        opts.console.print(f"dry run, nothing queued ({what}): {render.estimate_text(made.estimate)}")


def print_listing(
    opts: Options, key: str, rows: list[Any], table: Callable[[list[Any], int], Any], nothing: str
) -> None:
    """A listing command's output: JSON under `key`, else the table, else `nothing`."""
    if opts.json:
        print_result(opts, {key: [render.as_dict(row) for row in rows]})
    elif rows:
        opts.console.print(table(rows, opts.console.width))
    else:
        opts.console.print(nothing)


def job_filters(
    status: list[JobStatus] | None,
    mode: list[Mode] | None,
    after: datetime | None,
    before: datetime | None,
    query: str,
    bulk: str,
    project: str,
) -> dict[str, Any]:
    """The ListJobs filters of the ls / export flags, as GenJobsClient.list takes them."""
    return {
        "statuses": [s.value for s in status or []],
        "modes": [m.value for m in mode or []],
        # Dates without a zone are local time.
        "created_after": after.astimezone() if after else None,
        "created_before": before.astimezone() if before else None,
        "query": query,
        "bulk_job_id": bulk,
        "project": project,
    }


StatusOpt = Annotated[
    list[JobStatus] | None,
    typer.Option(
        "--status",
        "-s",
        metavar="STATUS",
        help="queued, processing, completed, failed or cancelled; repeat for several",
    ),
]
ModeOpt = Annotated[
    list[Mode] | None,
    typer.Option("--mode", "-m", metavar="MODE", help="topic, keywords, trends or spin; repeat for several"),
]
AfterOpt = Annotated[datetime | None, typer.Option(help="created at or after (local time)")]
BeforeOpt = Annotated[datetime | None, typer.Option(help="created before (local time)")]
QueryOpt = Annotated[str, typer.Option("--query", "-q", help="case-insensitive text in topic or keywords")]
BulkOpt = Annotated[str, typer.Option("--bulk", help="only the items of this bulk job")]
ProjectOpt = Annotated[str, typer.Option(help="only this project")]
