"""Single jobs: `genjobs submit`, `ls`, `show`, `watch`, `cancel`, `retry`, `rm`,
`stats` and `export`."""

from __future__ import annotations

import csv
import sys
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from genjobs.client import listing, render
from genjobs.client.cli.request_flags import (
    AttemptsFlag,
    ExtraFlag,
    FileFlag,
    KeywordFlag,
    ModeFlag,
    NotifyEmailFlag,
    NotifyUrlFlag,
    ProjectFlag,
    SourceFlag,
    TemplateFlag,
    ToneFlag,
    TopicFlag,
    WordsFlag,
    generation_params,
    job_request,
)
from genjobs.client.cli.shared import (
    AfterOpt,
    AtOpt,
    BeforeOpt,
    BulkOpt,
    ModeOpt,
    Options,
    PriorityOpt,
    ProjectOpt,
    QueryOpt,
    StatusOpt,
    YesOpt,
    at_time,
    confirm,
    connected,
    explain,
    fail,
    job_filters,
    print_estimate,
    print_result,
    priority_value,
)
from genjobs.client.client import GenJobsClient, GenJobsError
from genjobs.v1 import jobs_pb2

# Not a group: the root app (client.cli) takes these commands as its own.
commands = typer.Typer()


@commands.command()
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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="queue nothing: check it and print what it would cost and take")
    ] = False,
) -> None:
    """Queue one job. Example: genjobs submit --topic "Green tea" --word-count 300"""
    opts: Options = ctx.obj
    request = job_request(
        opts,
        file,
        mode,
        generation_params(opts, topic, keyword, word_count, tone, source_text, extra),
        project=project,
        request_id=request_id,
        max_attempts=max_attempts,
        notify_url=notify_url,
        notify_email=notify_email,
        template=template,
        priority=priority_value(priority),
    )
    when = at_time(opts, at)
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
            validate_only=dry_run,
        )
        if dry_run:
            print_estimate(opts, job, f"{render.mode_name(job.mode)}: {render.subject(job.params)}")
            return
        if watch:
            _watch(opts, client, job.id)
            return
        if opts.json:
            print_result(opts, render.as_dict(job))
        else:
            opts.console.print(
                f"queued {job.id} ({render.mode_name(job.mode)}: {render.subject(job.params)}"
                f"{render.queued_note(job.priority, job.schedule_time)})"
            )


ArchivedOpt = Annotated[bool, typer.Option("--archived", help="archived jobs too (GENJOBS_RETENTION_MODE)")]
ArchivedOnlyOpt = Annotated[bool, typer.Option("--archived-only", help="archived jobs only")]


def archive_filters(archived: bool, archived_only: bool) -> dict[str, bool]:
    """The ListJobs flags of --archived and --archived-only."""
    return {"show_archived": archived, "archived_only": archived_only}


@commands.command("ls")
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
    archived: ArchivedOpt = False,
    archived_only: ArchivedOnlyOpt = False,
) -> None:
    """List your jobs, newest first. Example: genjobs ls --status failed -q tea"""
    opts: Options = ctx.obj
    filters: dict[str, Any] = job_filters(status, mode, after, before, query, bulk, project)
    filters.update(archive_filters(archived, archived_only))
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
        print_result(opts, {"jobs": [render.as_dict(j) for j in jobs], "total_size": first.total_size})
        return
    if not jobs:
        opts.console.print("no jobs match")
        return
    opts.console.print(listing.jobs_table(jobs, opts.console.width))
    if len(jobs) < first.total_size:
        opts.console.print(
            f"[dim]{len(jobs)} of {render.total(first.total_size)} shown (--all for every one)[/]"
        )


@commands.command()
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
    print_result(opts, render.as_dict(job), render.job_detail(job))


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
        print_result(opts, render.as_dict(last))
    else:
        opts.console.print(render.outcome_line(last))
    if last.status != jobs_pb2.JOB_STATUS_COMPLETED:
        raise typer.Exit(1)


@commands.command()
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
        print_result(opts, {"jobs": done})
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


@commands.command()
def cancel(ctx: typer.Context, ids: IdsArg) -> None:
    """Cancel queued or running jobs (a running one is stopped within 2 s)."""
    _each(ctx, ids, "cancelled", lambda client, job_id: client.cancel(job_id))


@commands.command()
def retry(ctx: typer.Context, ids: IdsArg) -> None:
    """Queue failed or cancelled jobs again, as new jobs."""
    _each(ctx, ids, "retried", lambda client, job_id: client.retry(job_id))


@commands.command("rm")
def remove(ctx: typer.Context, ids: IdsArg, yes: YesOpt = False) -> None:
    """Delete completed, failed or cancelled jobs and their history (asks first, unless --yes)."""
    history = "its history" if len(ids) == 1 else "their history"
    confirm(ctx.obj, yes, f"delete {render.count(len(ids), 'job')} ({', '.join(ids)}) and {history}")
    _each(ctx, ids, "deleted", lambda client, job_id: client.delete(job_id))


@commands.command()
def stats(
    ctx: typer.Context, after: AfterOpt = None, before: BeforeOpt = None, project: ProjectOpt = ""
) -> None:
    """Counts by status and mode, total cost, mean duration and failure rate of
    the jobs stored now; then this month's spend, deleted jobs included."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        result = client.stats(
            created_after=after.astimezone() if after else None,
            created_before=before.astimezone() if before else None,
            project=project,
        )
        # This month's spend survives deletion, as the stored jobs' figures do not.
        usage = None if opts.json else client.usage()
    print_result(opts, render.as_dict(result), render.stats_table(result, usage, project))


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


@commands.command()
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
    archived: ArchivedOpt = False,
    archived_only: ArchivedOnlyOpt = False,
) -> None:
    """Write your job history (with any ls filter) as CSV, one row per job."""
    opts: Options = ctx.obj
    filters: dict[str, Any] = job_filters(status, mode, after, before, query, bulk, project)
    filters.update(archive_filters(archived, archived_only))
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
        print_result(opts, {"file": str(csv_file), "rows": written})
    elif not to_stdout:
        opts.console.print(f"wrote {render.count(written, 'job')} to {csv_file}")
