"""`genjobs`: every JobService and BulkService operation as a one-line command.

Target and token come from flags or GENJOBS_TARGET / GENJOBS_TOKEN; with no
token, a server started by `make run` in this folder is found through its data
dir (GENJOBS_DATA_DIR, default ./.genjobs) and a token for user `dev` is made.
Output is aligned tables, or with `-o json` one JSON document with the .proto
field names. Errors print one line and exit 1 (usage errors exit 2).
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from genjobs.v1 import bulk_pb2, jobs_pb2
from google.protobuf import json_format
from rich.console import Console
from rich.progress import Progress

from client import render, visible
from client.client import (
    FailedPrecondition,
    GenJobsClient,
    GenJobsError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
    params,
)

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
    typer.Option("--priority", "-p", help="high needs a premium or admin token [default: normal]"),
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


def _priority_value(priority: Priority | None) -> int:
    """The protobuf value of a --priority flag; 0 (unspecified) when not given."""
    return jobs_pb2.Priority.Value("PRIORITY_" + priority.value.upper()) if priority else 0


def _at(opts: Options, text: str) -> datetime | None:
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

    @property
    def json(self) -> bool:
        return self.output == Output.json

    def resolved_token(self) -> str:
        """The token to send: given, or made for `dev` from a local server's secret."""
        if self.token:
            return self.token
        secret = self.data_dir / "auth_secret"
        if secret.is_file():
            from server.auth import make_token  # only for a local `make run` server

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


def _show(opts: Options, data: Any, table: Any = None) -> None:
    if opts.json:
        render.print_json(opts.console, data)
    elif table is not None:
        opts.console.print(table)


def _show_listing(
    opts: Options, key: str, rows: list[Any], table: Callable[[list[Any], int], Any], nothing: str
) -> None:
    """A listing command's output: JSON under `key`, else the table, else `nothing`."""
    if opts.json:
        _show(opts, {key: [render.as_dict(row) for row in rows]})
    elif rows:
        opts.console.print(table(rows, opts.console.width))
    else:
        opts.console.print(nothing)


app = typer.Typer(
    help="Queue, watch and steer AI content-generation jobs on a genjobs server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
bulk_app = typer.Typer(help="Bulk jobs: 10 to 50 articles queued and steered as one.", no_args_is_help=True)
ops_app = typer.Typer(help="Act on up to all of your matching jobs at once.", no_args_is_help=True)
schedule_app = typer.Typer(help="Schedules: a job or bulk job made on a cron schedule.", no_args_is_help=True)
template_app = typer.Typer(help="Templates: saved requests to submit with overrides.", no_args_is_help=True)
app.add_typer(bulk_app, name="bulk")
app.add_typer(ops_app, name="ops")
app.add_typer(schedule_app, name="schedule")
app.add_typer(template_app, name="template")


@app.callback()
def main_options(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option("--target", "-t", envvar="GENJOBS_TARGET", help="host:port of the server")
    ] = DEFAULT_TARGET,
    token: Annotated[
        str, typer.Option("--token", envvar="GENJOBS_TOKEN", help="bearer token", show_default=False)
    ] = "",
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json")] = Output.table,
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="GENJOBS_DATA_DIR", help="a local server's data dir, for a token when none is given"
        ),
    ] = Path(".genjobs"),
    tls: Annotated[bool, typer.Option("--tls", envvar="GENJOBS_TLS", help="connect over TLS")] = False,
    ca_file: Annotated[
        str, typer.Option("--ca-file", envvar="GENJOBS_CA_FILE", help="PEM CA to trust (implies --tls)")
    ] = "",
) -> None:
    """genjobs command line."""
    # Consoles made per invocation, so that they write to the streams of the moment.
    ctx.obj = Options(target, token, output, data_dir, Console(), Console(stderr=True), tls, ca_file)


# ---- single jobs ------------------------------------------------------------


def _parse_extra(pairs: list[str], errors: Console) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(errors, f"--extra {pair!r}: write it as KEY=VALUE")
        extra[key] = value
    return extra


def _read_json(path: Path, errors: Console) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        return json.loads(text)
    except OSError as exc:
        fail(errors, f"cannot read {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        fail(errors, f"{path} is not JSON: {exc}")


ModeFlag = Annotated[Mode | None, typer.Option("--mode", "-m", help="what to write [default: topic]")]
TopicFlag = Annotated[str, typer.Option(help="the subject (topic and trends modes)")]
KeywordFlag = Annotated[list[str] | None, typer.Option("--keyword", "-k", help="a keyword; repeat it")]
WordsFlag = Annotated[int, typer.Option(help="words to write (0: the server default, 800)")]
ToneFlag = Annotated[str, typer.Option(help="e.g. friendly, formal")]
SourceFlag = Annotated[str, typer.Option(help="the text to rewrite (spin mode)")]
ExtraFlag = Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the generator; repeat it")]
ProjectFlag = Annotated[str, typer.Option(help="a project name to group jobs by")]
AttemptsFlag = Annotated[int, typer.Option(help="attempts before failing (0: server default)")]
NotifyUrlFlag = Annotated[str, typer.Option(help="receives a signed POST when the job ends")]
NotifyEmailFlag = Annotated[str, typer.Option(help="gets a mail when the job ends")]
FileFlag = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="a JSON SubmitJob request (- for stdin); flags given override it"),
]
TemplateFlag = Annotated[
    str, typer.Option("--template", "-t", help="start from this template; the flags given override it")
]


def _job_request(
    opts: Options,
    file: Path | None,
    mode: Mode | None,
    generation: jobs_pb2.GenerationParams,
    **fields: Any,
) -> jobs_pb2.SubmitJobRequest:
    """A SubmitJob request from a JSON file (if any) with the flags given over it;
    the mode defaults to topic unless a template supplies it."""
    request = jobs_pb2.SubmitJobRequest()
    if file is not None:
        try:
            request = _submit_request(_read_json(file, opts.errors))
        except (TypeError, ValueError) as exc:
            fail(opts.errors, f"{file}: not a SubmitJob request: {exc}")
    template = fields.get("template") or request.template
    if mode is not None or not (request.mode or template):
        request.mode = jobs_pb2.Mode.Value("MODE_" + (mode or Mode.topic).value.upper())
    request.params.MergeFrom(generation)
    for name, value in fields.items():
        if value:
            setattr(request, name, value)
    return request


def _generation(
    opts: Options,
    topic: str,
    keyword: list[str] | None,
    word_count: int,
    tone: str,
    source_text: str,
    extra: list[str] | None,
) -> jobs_pb2.GenerationParams:
    return params(
        topic=topic,
        keywords=keyword or [],
        word_count=word_count,
        tone=tone,
        source_text=source_text,
        extra=_parse_extra(extra or [], opts.errors),
    )


@app.command()
def submit(
    ctx: typer.Context,
    mode: ModeFlag = None,
    topic: TopicFlag = "",
    keyword: KeywordFlag = None,
    word_count: WordsFlag = 0,
    tone: ToneFlag = "",
    source_text: SourceFlag = "",
    extra: ExtraFlag = None,
    project: ProjectFlag = "",
    request_id: Annotated[str, typer.Option(help="makes a retried submit return the same job")] = "",
    max_attempts: AttemptsFlag = 0,
    notify_url: NotifyUrlFlag = "",
    notify_email: NotifyEmailFlag = "",
    file: FileFlag = None,
    template: TemplateFlag = "",
    priority: PriorityOpt = None,
    at: AtOpt = "",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="then follow its progress")] = False,
) -> None:
    """Queue one job. Example: genjobs submit --topic "Green tea" --word-count 300"""
    opts: Options = ctx.obj
    request = _job_request(
        opts,
        file,
        mode,
        _generation(opts, topic, keyword, word_count, tone, source_text, extra),
        project=project,
        request_id=request_id,
        max_attempts=max_attempts,
        notify_url=notify_url,
        notify_email=notify_email,
        template=template,
        priority=_priority_value(priority),
    )
    when = _at(opts, at)
    if when is None and request.HasField("schedule_time"):
        when = request.schedule_time.ToDatetime(tzinfo=UTC)
    with connected(ctx) as client:
        job = client.submit(
            request.mode,
            generation=request.params,
            project=request.project,
            request_id=request.request_id,
            max_attempts=request.max_attempts,
            notify_url=request.notify_url,
            notify_email=request.notify_email,
            template=request.template,
            priority=request.priority,
            schedule_time=when,
        )
        if watch:
            _watch(opts, client, job.id)
            return
        if opts.json:
            _show(opts, render.as_dict(job))
        else:
            opts.console.print(
                f"queued {job.id} ({render.mode_name(job.mode)}: {render.subject(job.params)}"
                f"{render.queued_note(job.priority, job.schedule_time)})"
            )


def _submit_request(data: Any) -> jobs_pb2.SubmitJobRequest:
    """A SubmitJob request from its JSON form, accepting "topic" as well as "MODE_TOPIC"."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    mode = data.get("mode")
    if isinstance(mode, str) and not mode.upper().startswith("MODE_"):
        data = {**data, "mode": "MODE_" + mode.upper()}
    return json_format.ParseDict(data, jobs_pb2.SubmitJobRequest())


def _filters(
    status: list[JobStatus] | None,
    mode: list[Mode] | None,
    after: datetime | None,
    before: datetime | None,
    query: str,
    bulk: str,
    project: str,
) -> dict[str, Any]:
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


StatusOpt = Annotated[list[JobStatus] | None, typer.Option("--status", "-s", help="repeat for several")]
ModeOpt = Annotated[list[Mode] | None, typer.Option("--mode", "-m", help="repeat for several")]
AfterOpt = Annotated[datetime | None, typer.Option(help="created at or after (local time)")]
BeforeOpt = Annotated[datetime | None, typer.Option(help="created before (local time)")]
QueryOpt = Annotated[str, typer.Option("--query", "-q", help="case-insensitive text in topic or keywords")]
BulkOpt = Annotated[str, typer.Option("--bulk", help="only the items of this bulk job")]
ProjectOpt = Annotated[str, typer.Option(help="only this project")]


@app.command("ls")
def list_jobs(
    ctx: typer.Context,
    status: StatusOpt = None,
    mode: ModeOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    query: QueryOpt = "",
    bulk: BulkOpt = "",
    project: ProjectOpt = "",
    schedule: Annotated[str, typer.Option("--schedule", help="only the runs of this schedule")] = "",
    limit: Annotated[int, typer.Option(help="at most this many jobs", min=1)] = 20,
    all_: Annotated[bool, typer.Option("--all", "-a", help="every matching job, page after page")] = False,
) -> None:
    """List your jobs, newest first. Example: genjobs ls --status failed -q tea"""
    opts: Options = ctx.obj
    filters = _filters(status, mode, after, before, query, bulk, project)
    if schedule:
        filters["schedule_id"] = schedule
    with connected(ctx) as client:
        first = client.list(page_size=min(limit, 100) if not all_ else 100, **filters)
        jobs = list(first.jobs)
        token = first.next_page_token
        while token and (all_ or len(jobs) < limit):
            page = client.list(page_size=100, page_token=token, **filters)
            jobs.extend(page.jobs)
            token = page.next_page_token
        if not all_:
            jobs = jobs[:limit]
    if opts.json:
        _show(opts, {"jobs": [render.as_dict(j) for j in jobs], "total_size": first.total_size})
        return
    if not jobs:
        opts.console.print("no jobs match")
        return
    opts.console.print(render.jobs_table(jobs, opts.console.width))
    if len(jobs) < first.total_size:
        opts.console.print(
            f"[dim]{len(jobs)} of {render.total(first.total_size)} shown (--all for every one)[/]"
        )


@app.command()
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    content: Annotated[
        bool, typer.Option(help="print the article alone, as stored (to pipe: > article.md)")
    ] = False,
) -> None:
    """Show one job: parameters, progress, result or error, attempts."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        job = client.get(job_id)
    if content and not opts.json:
        text = job.result.content
        if not text:
            fail(opts.errors, f"job {job_id} has no article (it is {render.status_name(job.status)})")
        # Written as is (no wrapping, no markup), so that a redirect gets the article byte for byte.
        sys.stdout.write(text)
        if sys.stdout.isatty() and not text.endswith("\n"):
            sys.stdout.write("\n")  # only a terminal gets the prompt back on a line of its own
        return
    _show(opts, render.as_dict(job), render.job_detail(job))


def _watch(opts: Options, client: GenJobsClient, job_id: str) -> None:
    if opts.json:
        last = None
        for event in client.watch(job_id):
            last = event.job
    else:
        last = render.follow_job(opts.console, lambda hook: client.watch(job_id, on_reconnect=hook), job_id)
    if last is None:
        return
    if opts.json:
        _show(opts, render.as_dict(last))
    else:
        opts.console.print(render.outcome_line(last))
    if last.status != jobs_pb2.JOB_STATUS_COMPLETED:
        raise typer.Exit(1)


@app.command()
def watch(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Follow a job live until it ends; exit 1 unless it completed.

    Reconnects by itself when the connection drops, losing no step."""
    with connected(ctx) as client:
        client.get(job_id)  # a server that is not there at all is an error at once, not a minute of retries
        _watch(ctx.obj, client, job_id)


def _each(ctx: typer.Context, ids: list[str], verb: str, act: Any) -> None:
    """Apply `act(client, id)` to every id; report each; exit 1 if any failed."""
    opts: Options = ctx.obj
    done, failed = [], 0
    with connected(ctx) as client:
        for job_id in ids:
            try:
                result = act(client, job_id)
            except GenJobsError as error:
                failed += 1
                opts.errors.print(
                    f"[red]genjobs: error:[/] {explain(error, opts.target)}", highlight=False, soft_wrap=True
                )
                continue
            done.append(render.as_dict(result) if result is not None else {"id": job_id})
            if not opts.json:
                opts.console.print(_done_line(verb, job_id, result))
    if opts.json:
        _show(opts, {"jobs": done})
    if failed:
        raise typer.Exit(1)


def _done_line(verb: str, job_id: str, result: jobs_pb2.Job | None) -> str:
    if result is None:
        return f"{verb} {job_id}"
    if verb == "retried":
        return f"retried {job_id} as {result.id}"
    if result.status == jobs_pb2.JOB_STATUS_PROCESSING:
        return f"stopping {job_id} (it was running)"
    return f"{verb} {job_id}"


IdsArg = Annotated[list[str], typer.Argument(metavar="ID...", help="one or more job ids")]


@app.command()
def cancel(ctx: typer.Context, ids: IdsArg) -> None:
    """Cancel queued or running jobs (a running one is stopped within 2 s)."""
    _each(ctx, ids, "cancelled", lambda client, job_id: client.cancel(job_id))


@app.command()
def retry(ctx: typer.Context, ids: IdsArg) -> None:
    """Queue failed or cancelled jobs again, as new jobs."""
    _each(ctx, ids, "retried", lambda client, job_id: client.retry(job_id))


@app.command("rm")
def remove(ctx: typer.Context, ids: IdsArg) -> None:
    """Delete completed, failed or cancelled jobs and their history."""
    _each(ctx, ids, "deleted", lambda client, job_id: client.delete(job_id))


@app.command()
def stats(
    ctx: typer.Context, after: AfterOpt = None, before: BeforeOpt = None, project: ProjectOpt = ""
) -> None:
    """Counts by status and mode, total cost, mean duration, failure rate."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        result = client.stats(
            created_after=after.astimezone() if after else None,
            created_before=before.astimezone() if before else None,
            project=project,
        )
    _show(opts, render.as_dict(result), render.stats_table(result))


EXPORT_COLUMNS = (
    "id",
    "status",
    "mode",
    "project",
    "topic",
    "keywords",
    "word_count",
    "tone",
    "title",
    "result_word_count",
    "cost_cents",
    "attempt",
    "max_attempts",
    "error_code",
    "error_message",
    "bulk_job_id",
    "queue_position",
    "retry_of",
    "created",
    "started",
    "ended",
)


def _export_row(job: jobs_pb2.Job, content: bool = False) -> list[Any]:
    def iso(stamp: Any) -> str:
        return stamp.ToJsonString() if stamp.seconds else ""

    return [
        job.id,
        render.status_name(job.status),
        render.mode_name(job.mode),
        job.project,
        job.params.topic,
        ";".join(job.params.keywords),
        job.params.word_count,
        job.params.tone,
        job.result.title,
        job.result.word_count,
        job.result.cost_cents,
        job.attempt,
        job.max_attempts,
        job.error.code,
        job.error.message,
        job.bulk_job_id,
        job.queue_position or "",
        job.retry_of,
        iso(job.create_time),
        iso(job.start_time),
        iso(job.end_time),
    ] + ([job.result.content] if content else [])


@app.command()
def export(
    ctx: typer.Context,
    csv_file: Annotated[Path, typer.Option("--csv", help="the CSV file to write (- for stdout)")],
    status: StatusOpt = None,
    mode: ModeOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    query: QueryOpt = "",
    bulk: BulkOpt = "",
    project: ProjectOpt = "",
    content: Annotated[bool, typer.Option(help="add each article, in a last column 'content'")] = False,
) -> None:
    """Write your job history (with any ls filter) as CSV, one row per job."""
    opts: Options = ctx.obj
    filters = _filters(status, mode, after, before, query, bulk, project)
    to_stdout = str(csv_file) == "-"
    try:
        handle = sys.stdout if to_stdout else csv_file.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        fail(opts.errors, f"cannot write {csv_file}: {exc.strerror}")
    written = 0
    try:
        writer = csv.writer(handle)
        writer.writerow(EXPORT_COLUMNS + (("content",) if content else ()))
        # A file gets the jobs as stored; a terminal (stdout) sees control characters made visible.
        with (
            connected(ctx, raw=not to_stdout) as client,
            Progress(console=opts.errors, transient=True) as progress,
        ):
            task = progress.add_task("exporting", total=None)
            token = ""
            while True:
                page = client.list(page_size=100, page_token=token, full=content, **filters)
                # A capped total ("1,000 or more") is no length for the bar.
                known = page.total_size and page.total_size < render.TOTAL_SIZE_CAP
                progress.update(task, total=page.total_size if known else None)
                for job in page.jobs:
                    writer.writerow(_export_row(job, content))
                    written += 1
                progress.update(task, completed=written)
                token = page.next_page_token
                if not token:
                    break
    finally:
        if not to_stdout:
            handle.close()
    if opts.json:
        _show(opts, {"file": str(csv_file), "rows": written})
    elif not to_stdout:
        opts.console.print(f"wrote {written} jobs to {csv_file}")


# ---- bulk operations ----------------------------------------------------------

OPERATIONS = {
    "retry-failed": ("RETRY_ALL_FAILED", "retried"),
    "cancel-queued": ("CANCEL_ALL_QUEUED", "cancelled"),
    "clean-completed": ("DELETE_ALL_COMPLETED", "deleted"),
}
OPERATION_HELP = {
    "retry-failed": "Retry every failed job (each failed job is retried once).",
    "cancel-queued": "Cancel every queued job.",
    "clean-completed": "Delete every completed job and its history.",
}


def _operation(
    ctx: typer.Context, name: str, bulk: str, mode: list[Mode] | None, project: str, dry_run: bool
) -> None:
    opts: Options = ctx.obj
    operation, verb = OPERATIONS[name]
    scope: dict[str, Any] = {"bulk_job_id": bulk, "modes": [m.value for m in mode or []], "project": project}
    with connected(ctx) as client:
        preview = client.run_bulk_operation(operation, validate_only=True, **scope)
        if dry_run:
            if opts.json:
                _show(opts, render.as_dict(preview))
            else:
                sample = ", ".join(preview.job_ids)
                opts.console.print(
                    f"would have {verb} {preview.affected_count} jobs (e.g. {sample or 'none'})"
                )
            return
        # The server acts on at most 100 per call: go on until none is left,
        # a bounded number of rounds (new failures during a retry wait for the next run).
        ids: list[str] = []
        rounds = preview.affected_count // 100 + 1
        for _ in range(rounds):
            result = client.run_bulk_operation(operation, **scope)
            ids.extend(result.job_ids)
            if not result.remaining_count:
                break
    if opts.json:
        _show(opts, {"job_ids": ids, "affected_count": len(ids)})
    else:
        opts.console.print(f"{verb} {len(ids)} jobs")


OpsBulkOpt = Annotated[str, typer.Option("--bulk", help="only the items of this bulk job")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", "-n", help="count and sample, change nothing")]


def _operation_command(name: str) -> Any:
    def command(
        ctx: typer.Context,
        bulk: OpsBulkOpt = "",
        mode: ModeOpt = None,
        project: ProjectOpt = "",
        dry_run: DryRunOpt = False,
    ) -> None:
        _operation(ctx, name, bulk, mode, project, dry_run)

    return command


for _name in OPERATIONS:
    ops_app.command(_name, help=OPERATION_HELP[_name])(_operation_command(_name))


# ---- bulk jobs ----------------------------------------------------------------

ITEM_FIELDS = ("topic", "keywords", "word_count", "tone", "source_text", "extra")


def read_items(path: Path) -> list[dict[str, Any]]:
    """Bulk items from CSV (a header row naming the fields; keywords split on ;)
    or JSON lines (one object per line). Raises ValueError naming the bad line."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv" or (str(path) != "-" and not text.lstrip().startswith("{")):
        return [_csv_item(row, n) for n, row in enumerate(csv.DictReader(text.splitlines()), start=2)]
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {n}: not JSON: {exc.msg}") from None
        if not isinstance(item, dict) or set(item) - set(ITEM_FIELDS):
            raise ValueError(f"line {n}: expected an object with fields among {', '.join(ITEM_FIELDS)}")
        items.append(item)
    return items


def _csv_item(row: dict[str, str], line: int) -> dict[str, Any]:
    item: dict[str, Any] = {"extra": {}}
    for name, value in row.items():
        value = (value or "").strip()
        if name is None or not value:
            continue
        if name == "keywords":
            item["keywords"] = [k.strip() for k in value.split(";") if k.strip()]
        elif name == "word_count":
            if not value.isdigit():
                raise ValueError(f"line {line}: word_count {value!r} is not a whole number")
            item["word_count"] = int(value)
        elif name in ITEM_FIELDS:
            item[name] = value
        else:
            item["extra"][name] = value  # any other column goes to the generator
    return item


def _bulk_request(
    opts: Options, file: Path | None, mode: Mode | None, **fields: Any
) -> bulk_pb2.CreateBulkJobRequest:
    """A CreateBulkJob request from an items file (if any) and the flags given;
    the mode defaults to topic unless a template supplies it."""
    items: list[dict[str, Any]] = []
    if file is not None:
        try:
            items = read_items(file)
        except OSError as exc:
            fail(opts.errors, f"cannot read {file}: {exc.strerror}")
        except ValueError as exc:
            fail(opts.errors, f"{file}: {exc}")
    elif not fields.get("template"):
        fail(opts.errors, "give an items file (CSV or JSON lines), or --template NAME")
    mode_text = mode.value if mode else "" if fields.get("template") else Mode.topic.value
    request = bulk_pb2.CreateBulkJobRequest(items=[params(**item) for item in items])
    if mode_text:
        request.mode = jobs_pb2.Mode.Value("MODE_" + mode_text.upper())
    for name, value in fields.items():
        if value:
            setattr(request, name, value)
    return request


ItemsArg = Annotated[
    Path | None, typer.Argument(help="CSV with a header row, or JSON lines (- for stdin)", show_default=False)
]


@bulk_app.command("create")
def bulk_create(
    ctx: typer.Context,
    file: ItemsArg = None,
    mode: Annotated[Mode | None, typer.Option("--mode", "-m", help="[default: topic]")] = None,
    project: ProjectOpt = "",
    request_id: Annotated[str, typer.Option(help="makes a retried create return the same bulk job")] = "",
    notify_url: Annotated[str, typer.Option(help="receives a signed POST when it completes")] = "",
    notify_email: Annotated[str, typer.Option(help="gets a mail when it completes")] = "",
    template: TemplateFlag = "",
    priority: PriorityOpt = None,
    at: AtOpt = "",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="then follow its progress")] = False,
) -> None:
    """Queue 10 to 50 articles as one bulk job, from a CSV or JSON-lines file (or a template)."""
    opts: Options = ctx.obj
    request = _bulk_request(
        opts,
        file,
        mode,
        project=project,
        request_id=request_id,
        notify_url=notify_url,
        notify_email=notify_email,
        template=template,
        priority=_priority_value(priority),
    )
    when = _at(opts, at)
    with connected(ctx) as client:
        bulk = client.create_bulk(
            request.mode,
            request.items,
            request_id=request.request_id,
            project=request.project,
            notify_url=request.notify_url,
            notify_email=request.notify_email,
            template=request.template,
            priority=request.priority,
            schedule_time=when,
        )
        if watch:
            _watch_bulk(opts, client, bulk.id)
            return
    if opts.json:
        _show(opts, render.as_dict(bulk))
    else:
        opts.console.print(
            f"queued bulk job {bulk.id} with {bulk.total_items} items"
            f"{render.queued_note(bulk.priority, bulk.schedule_time)}"
        )


@bulk_app.command("ls")
def bulk_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="at most this many", min=1)] = 20,
    all_: Annotated[bool, typer.Option("--all", "-a", help="every bulk job")] = False,
) -> None:
    """List your bulk jobs, newest first, with their counts."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        bulks = list(client.iter_bulk(limit=0 if all_ else limit))
    _show_listing(opts, "bulk_jobs", bulks, render.bulk_table, "no bulk jobs")


BulkIdArg = Annotated[str, typer.Argument(metavar="ID", help="a bulk job id")]


@bulk_app.command("show")
def bulk_show(ctx: typer.Context, bulk_id: BulkIdArg) -> None:
    """Show a bulk job: counts, estimate, errors, and every item."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        bulk = client.get_bulk(bulk_id)
    if opts.json:
        _show(opts, render.as_dict(bulk))
    else:
        summary, items = render.bulk_detail(bulk)
        opts.console.print(summary)
        opts.console.print(items)


def _watch_bulk(opts: Options, client: GenJobsClient, bulk_id: str) -> None:
    last = None
    if opts.json:
        for event in client.watch_bulk(bulk_id):
            last = event.bulk_job
        if last is not None:
            _show(opts, render.as_dict(last))
        return
    last = render.follow_bulk(
        opts.console, lambda hook: client.watch_bulk(bulk_id, on_reconnect=hook), bulk_id
    )
    if last is not None:
        opts.console.print(
            f"{render.styled(render.bulk_status_name(last.status))}: {render.bulk_counts(last)}"
        )
        for line in last.error_summary:
            opts.console.print(f"  [red]{line}[/]", highlight=False)


@bulk_app.command("watch")
def bulk_watch(ctx: typer.Context, bulk_id: BulkIdArg) -> None:
    """Follow a bulk job live until it is completed or cancelled."""
    with connected(ctx) as client:
        client.get_bulk(bulk_id)  # as for watch: no server at all is an error at once
        _watch_bulk(ctx.obj, client, bulk_id)


def _bulk_action(ctx: typer.Context, bulk_id: str, verb: str, act: Any) -> None:
    opts: Options = ctx.obj
    with connected(ctx) as client:
        bulk = act(client, bulk_id)
    if opts.json:
        _show(opts, render.as_dict(bulk))
    else:
        opts.console.print(f"{verb} bulk job {bulk.id}: now {render.bulk_status_name(bulk.status)}")


@bulk_app.command("pause")
def bulk_pause(ctx: typer.Context, bulk_id: BulkIdArg) -> None:
    """Start no further items (the running one finishes)."""
    _bulk_action(ctx, bulk_id, "paused", lambda client, i: client.pause_bulk(i))


@bulk_app.command("resume")
def bulk_resume(ctx: typer.Context, bulk_id: BulkIdArg) -> None:
    """Go on with a paused bulk job."""
    _bulk_action(ctx, bulk_id, "resumed", lambda client, i: client.resume_bulk(i))


@bulk_app.command("cancel")
def bulk_cancel(ctx: typer.Context, bulk_id: BulkIdArg) -> None:
    """Cancel the queued items and stop the running one."""
    _bulk_action(ctx, bulk_id, "cancelled", lambda client, i: client.cancel_bulk(i))


# ---- notifications ------------------------------------------------------------


# ---- schedules and templates ---------------------------------------------------


def _target(
    opts: Options,
    items: Path | None,
    file: Path | None,
    mode: Mode | None,
    generation: jobs_pb2.GenerationParams,
    **fields: Any,
) -> dict[str, Any]:
    """The request a schedule or template holds, from the submit flags: a
    CreateBulkJob request with --items, else a SubmitJob request."""
    if items is not None:
        bulk_fields = {k: v for k, v in fields.items() if k in ("project", "notify_url", "notify_email")}
        return {"bulk_job": _bulk_request(opts, items, mode, **bulk_fields)}
    return {"job": _job_request(opts, file, mode, generation, **fields)}


BulkItemsFlag = Annotated[
    Path | None, typer.Option("--items", help="a bulk job's items (CSV or JSON lines) instead of one job")
]


@schedule_app.command("create")
def schedule_create(
    ctx: typer.Context,
    cron: Annotated[
        str, typer.Option(help="minute hour day month weekday, or a first field of seconds: '30 */5 * * * *'")
    ],
    tz: Annotated[str, typer.Option("--tz", help="the IANA time zone of the cron [default: UTC]")] = "",
    template: Annotated[str, typer.Option("--template", "-t", help="run this template as it is then")] = "",
    items: BulkItemsFlag = None,
    mode: ModeFlag = None,
    topic: TopicFlag = "",
    keyword: KeywordFlag = None,
    word_count: WordsFlag = 0,
    tone: ToneFlag = "",
    source_text: SourceFlag = "",
    extra: ExtraFlag = None,
    project: ProjectFlag = "",
    max_attempts: AttemptsFlag = 0,
    notify_url: NotifyUrlFlag = "",
    notify_email: NotifyEmailFlag = "",
    file: FileFlag = None,
    request_id: Annotated[str, typer.Option(help="makes a retried create return the same schedule")] = "",
) -> None:
    """Create a job (or, with --items, a bulk job) on a cron schedule.
    Example: genjobs schedule create --cron '0 9 * * 1' --tz Europe/Berlin --topic Tea"""
    opts: Options = ctx.obj
    target: dict[str, Any] = {"template": template}
    if not template:
        target = _target(
            opts,
            items,
            file,
            mode,
            _generation(opts, topic, keyword, word_count, tone, source_text, extra),
            project=project,
            max_attempts=max_attempts,
            notify_url=notify_url,
            notify_email=notify_email,
        )
    with connected(ctx) as client:
        schedule = client.create_schedule(cron, time_zone=tz, request_id=request_id, **target)
    if opts.json:
        _show(opts, render.as_dict(schedule))
    else:
        next_run = render.when(schedule.next_run_time)
        opts.console.print(f"schedule {schedule.id} ({render.target_text(schedule)}): next run {next_run}")


@schedule_app.command("ls")
def schedule_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="at most this many", min=1)] = 20,
    all_: Annotated[bool, typer.Option("--all", "-a", help="every schedule")] = False,
) -> None:
    """List your schedules, newest first (their runs: genjobs ls --schedule ID)."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        schedules = list(client.iter_schedules(limit=0 if all_ else limit))
    _show_listing(opts, "schedules", schedules, render.schedules_table, "no schedules")


ScheduleIdArg = Annotated[str, typer.Argument(metavar="ID", help="a schedule id")]


def _schedule_action(ctx: typer.Context, schedule_id: str, verb: str, act: Any) -> None:
    opts: Options = ctx.obj
    with connected(ctx) as client:
        schedule = act(client, schedule_id)
    if opts.json:
        _show(opts, render.as_dict(schedule) if schedule is not None else {"id": schedule_id})
    elif schedule is None:
        opts.console.print(f"{verb} schedule {schedule_id}")
    else:
        next_run = render.when(schedule.next_run_time)
        opts.console.print(f"{verb} schedule {schedule_id}" + (f": next run {next_run}" if next_run else ""))


@schedule_app.command("pause")
def schedule_pause(ctx: typer.Context, schedule_id: ScheduleIdArg) -> None:
    """Stop a schedule's ticks until it is resumed."""
    _schedule_action(ctx, schedule_id, "paused", GenJobsClient.pause_schedule)


@schedule_app.command("resume")
def schedule_resume(ctx: typer.Context, schedule_id: ScheduleIdArg) -> None:
    """Let a paused schedule tick again, from the next tick after now."""
    _schedule_action(ctx, schedule_id, "resumed", GenJobsClient.resume_schedule)


@schedule_app.command("rm")
def schedule_remove(ctx: typer.Context, schedule_id: ScheduleIdArg) -> None:
    """Delete a schedule (the jobs it created stay)."""
    _schedule_action(ctx, schedule_id, "deleted", GenJobsClient.delete_schedule)


@template_app.command("save")
def template_save(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="1 to 64 of A-Z a-z 0-9 . _ -")],
    items: BulkItemsFlag = None,
    mode: ModeFlag = None,
    topic: TopicFlag = "",
    keyword: KeywordFlag = None,
    word_count: WordsFlag = 0,
    tone: ToneFlag = "",
    source_text: SourceFlag = "",
    extra: ExtraFlag = None,
    project: ProjectFlag = "",
    max_attempts: AttemptsFlag = 0,
    notify_url: NotifyUrlFlag = "",
    notify_email: NotifyEmailFlag = "",
    file: FileFlag = None,
) -> None:
    """Save the submit flags (or, with --items, a bulk job) under a name; an
    existing template of that name is replaced. Use it: genjobs submit --template NAME"""
    opts: Options = ctx.obj
    target = _target(
        opts,
        items,
        file,
        mode,
        _generation(opts, topic, keyword, word_count, tone, source_text, extra),
        project=project,
        max_attempts=max_attempts,
        notify_url=notify_url,
        notify_email=notify_email,
    )
    with connected(ctx) as client:
        template, created = client.save_template(name, **target)
    if opts.json:
        _show(opts, render.as_dict(template))
    else:
        done = "saved" if created else "updated"
        opts.console.print(f"{done} template {name} ({render.target_text(template)})")


@template_app.command("ls")
def template_list(ctx: typer.Context) -> None:
    """List your templates by name."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        templates = list(client.iter_templates())
    _show_listing(opts, "templates", templates, render.templates_table, "no templates")


@template_app.command("rm")
def template_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="its name")]) -> None:
    """Delete a template (schedules naming it create nothing until it is saved again)."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        client.delete_template(name)
    if opts.json:
        _show(opts, {"name": name})
    else:
        opts.console.print(f"deleted template {name}")


@app.command("notifications")
def notifications(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="at most this many of the newest", min=1)] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="then print new ones as they arrive, until Ctrl-C")
    ] = False,
    interval: Annotated[float, typer.Option(help="seconds between two looks for new ones", min=0.1)] = 2.0,
) -> None:
    """Your notifications (work that finished), newest first; --follow waits for more."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        recent = list(client.iter_notifications(limit=limit))
        if not follow:
            if opts.json:
                _show(opts, {"notifications": [render.as_dict(n) for n in recent]})
            elif recent:
                opts.console.print(render.notifications_table(recent))
            else:
                opts.console.print("no notifications")
            return
        # Following prints one line (or JSON document) each, oldest first, as `tail -f` does.
        for note in reversed(recent):
            _notification_line(opts, note)
        opts.errors.print("[dim]waiting for new notifications (Ctrl-C to stop)[/]")
        with contextlib.suppress(KeyboardInterrupt):
            _follow_notifications(opts, client, {n.id for n in recent}, interval)


def _follow_notifications(opts: Options, client: GenJobsClient, seen: set[str], interval: float) -> None:
    """Print notifications not in `seen` as they appear, looking every `interval` s.

    Polling ListNotifications is the one way to hear of every notification:
    they come from bulk jobs created anywhere, later too, which watching
    bulk jobs would have to discover first. A look is one indexed query
    for the newest page."""
    unreachable = False
    while True:
        time.sleep(interval)
        try:
            new = _unseen(client, seen)
        except Unavailable:
            if not unreachable:
                opts.errors.print(f"[dim]{render.RECONNECTING}[/]")
            unreachable = True
            continue
        unreachable = False
        for note in reversed(new):
            seen.add(note.id)
            _notification_line(opts, note)


def _unseen(client: GenJobsClient, seen: set[str]) -> list[bulk_pb2.Notification]:
    """The notifications not in `seen`, newest first: the newest pages, up to
    the first page that holds one already seen."""
    new: list[bulk_pb2.Notification] = []
    token = ""
    while True:
        page = client.notifications(page_token=token)
        new += [n for n in page.notifications if n.id not in seen]
        token = page.next_page_token
        if not token or any(n.id in seen for n in page.notifications):
            return new


def _notification_line(opts: Options, note: bulk_pb2.Notification) -> None:
    if opts.json:
        opts.console.print(json.dumps(render.as_dict(note)), highlight=False, soft_wrap=True)
    else:
        opts.console.print(render.notification_line(note), highlight=False, soft_wrap=True)


# ---- budgets --------------------------------------------------------------

budget_app = typer.Typer(help="Monthly spending limits (admin tokens).", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@app.command("usage")
def usage(
    ctx: typer.Context,
    owner: Annotated[str, typer.Option(help="whose usage (admins only; default: yours)")] = "",
) -> None:
    """Spend this month (UTC) by project, your limits, and queued jobs against the cap."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        result = client.usage(owner)
    _show(opts, render.as_dict(result), render.usage_table(result))


@budget_app.command("set")
def budget_set(
    ctx: typer.Context,
    owner: Annotated[str, typer.Argument(metavar="OWNER", help="the user id the limit applies to")],
    cents: Annotated[int, typer.Argument(metavar="CENTS", help="the monthly limit in cents; 0 removes it")],
    project: Annotated[str, typer.Option(help="limit only this project's spend")] = "",
) -> None:
    """Set OWNER's monthly spending limit (or one project's); needs an admin token."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        result = client.set_budget(owner, cents, project=project)
    if opts.json:
        render.print_json(opts.console, render.as_dict(result))
    else:
        opts.console.print(render.budget_line(result), highlight=False)


# ---- tiers ------------------------------------------------------------------

tier_app = typer.Typer(
    help="Owners' stored tiers: who may have PRIORITY_HIGH (admin tokens).", no_args_is_help=True
)
app.add_typer(tier_app, name="tier")


@tier_app.command("set")
def tier_set(
    ctx: typer.Context,
    owner: Annotated[str, typer.Argument(metavar="OWNER", help="the user id the tier applies to")],
    tier: Annotated[
        str, typer.Argument(metavar="TIER", help='"premium" grants PRIORITY_HIGH; "none" revokes it')
    ],
) -> None:
    """Grant or revoke OWNER's premium tier (PRIORITY_HIGH, schedule ticks included); needs an admin token."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        result = client.set_tier(owner, "" if tier.lower() in ("none", "plain", "") else tier)
    if opts.json:
        render.print_json(opts.console, render.as_dict(result))
    else:
        opts.console.print(f"{result.owner}: {result.tier or 'no stored tier'}", highlight=False)


GLOBAL_OPTIONS = ("-o", "--output", "-t", "--target", "--token", "--data-dir")


def globals_first(argv: list[str]) -> list[str]:
    """Move global options given after the command (`genjobs ls -o json`) to the front."""
    front: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS and "--" not in rest:
            front.append(arg)
            if "=" not in arg:
                front.append(next(args, ""))
        else:
            rest.append(arg)
    return front + rest


def main() -> None:
    """Entry point of the genjobs console script."""
    app(globals_first(sys.argv[1:]), prog_name="genjobs")


if __name__ == "__main__":
    main()
