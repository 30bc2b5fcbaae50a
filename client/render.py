"""How the command line shows jobs: aligned tables, JSON documents and live progress."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.table import Column, Table
from rich.text import Text

from genjobs.client.client import ReconnectHook
from genjobs.v1 import bulk_pb2, jobs_pb2, schedules_pb2, templates_pb2

E = TypeVar("E")  # a stream's event
S = TypeVar("S")  # the state an event carries

FINAL_JOB = {jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED}
STATUS_STYLE = {
    "queued": "cyan",
    "processing": "yellow",
    "paused": "magenta",
    "completed": "green",
    "failed": "red",
    "cancelled": "dim",
}

# ListJobs counts at most this many: a total_size of it means "this many or more".
TOTAL_SIZE_CAP = 1000


def total(total_size: int) -> str:
    """A ListJobs total as people read it: "1,000+" once it reaches the cap."""
    return f"{total_size:,}+" if total_size >= TOTAL_SIZE_CAP else str(total_size)


def count(number: int, noun: str, plural: str = "") -> str:
    """`1 job`, `2 jobs`, `0 jobs`: a number and its noun in agreement (`plural` when not noun + "s")."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def as_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data with the .proto field names, every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(console: Console, data: Any) -> None:
    """One JSON document on standard output (no colour, no wrapping)."""
    console.print_json(json.dumps(data), highlight=False)


def status_name(status: int) -> str:
    """JOB_STATUS_FAILED -> "failed"."""
    return jobs_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_").lower()  # type: ignore[arg-type]


def bulk_status_name(status: int) -> str:
    """BULK_JOB_STATUS_PAUSED -> "paused"."""
    return bulk_pb2.BulkJobStatus.Name(status).removeprefix("BULK_JOB_STATUS_").lower()  # type: ignore[arg-type]


def mode_name(mode: int) -> str:
    """MODE_TOPIC -> "topic"."""
    return jobs_pb2.Mode.Name(mode).removeprefix("MODE_").lower()  # type: ignore[arg-type]


def priority_name(priority: int) -> str:
    """PRIORITY_HIGH -> "high"; unspecified is "normal"."""
    return jobs_pb2.Priority.Name(priority or jobs_pb2.PRIORITY_NORMAL).removeprefix("PRIORITY_").lower()  # type: ignore[arg-type]


def queued_note(priority: int, schedule_time: Timestamp) -> str:
    """What a submit prints after the id: its priority unless normal, its schedule time if any."""
    notes = [f"priority {priority_name(priority)}"] if priority_name(priority) != "normal" else []
    if schedule_time.seconds or schedule_time.nanos:
        notes.append(f"not before {when(schedule_time)}")
    return (", " + ", ".join(notes)) if notes else ""


def styled(status: str) -> str:
    """A status name in its colour."""
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


_utc = False  # --utc: every time in UTC rather than in the viewer's zone


def use_zone(utc: bool) -> None:
    """Show times in UTC (`--utc`) or, the default, in the viewer's local zone."""
    global _utc
    _utc = utc


def moment(stamp: Timestamp, time_zone: str = "") -> datetime:
    """A timestamp as an aware time: UTC with --utc, else in `time_zone` (an
    IANA name, as a schedule's) when given and known, else the local zone."""
    instant = datetime.fromtimestamp(stamp.seconds, UTC)
    if _utc:
        return instant
    if time_zone:
        try:
            return instant.astimezone(ZoneInfo(time_zone))
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a zone this machine does not know: the local one, named
    return instant.astimezone()


def when(stamp: Timestamp, time_zone: str = "") -> str:
    """A timestamp to the second with its zone named (`2026-12-07 09:00:00 CET`); "" when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return moment(stamp, time_zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def short_when(stamp: Timestamp, time_zone: str = "", zone: bool = False) -> str:
    """`12-07 09:00` for a table whose header names the zone (or with it, `zone`)."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return moment(stamp, time_zone).strftime("%m-%d %H:%M" + (" %Z" if zone else ""))


def zone_name() -> str:
    """The abbreviation of the zone times are shown in, now (`CET`, `UTC`)."""
    return "UTC" if _utc else datetime.now().astimezone().strftime("%Z")


def subject(params: jobs_pb2.GenerationParams, width: int = 40) -> str:
    """What a job is about, in a few words."""
    text = params.topic or ", ".join(params.keywords) or " ".join(params.source_text.split()[:8])
    return text if len(text) <= width else text[: width - 1] + "…"


def job_detail(job: jobs_pb2.Job) -> Table:
    """Every field of one job worth reading, as a two-column table."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    params = job.params
    rows: list[tuple[str, str]] = [
        ("id", job.id),
        ("status", styled(status_name(job.status)) + (" (cancel requested)" if job.cancel_requested else "")),
        ("mode", mode_name(job.mode)),
        ("topic", params.topic),
        ("keywords", ", ".join(params.keywords)),
        ("word count", str(params.word_count)),
        ("tone", params.tone),
        ("extra", ", ".join(f"{k}={v}" for k, v in sorted(params.extra.items()))),
        ("project", job.project),
        ("owner", job.owner),
        ("priority", priority_name(job.priority)),
        ("scheduled", when(job.schedule_time)),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("progress", f"{job.progress.percentage}% {job.progress.stage} {job.progress.message}".strip()),
        ("stages", stages_text(job)),
        ("bulk job", f"{job.bulk_job_id} #{job.queue_position}" if job.bulk_job_id else ""),
        ("retry of", job.retry_of),
        ("request id", job.request_id),
        ("created", when(job.create_time)),
        ("started", when(job.start_time)),
        ("ended", when(job.end_time)),
        ("archived", when(job.archive_time)),
    ]
    if job.HasField("error"):
        rows.append(("error", f"[red]{job.error.code}[/]: {job.error.message} ({job.error.category})"))
    rows += [(f"attempt {e.attempt} error", f"{e.code}: {e.message}") for e in job.attempt_errors]
    if job.HasField("result"):
        result = job.result
        rows.append(("title", result.title))
        rows.append(("result", f"{count(result.word_count, 'word')}, {cost_text(result)}"))
        rows.append(("content", _preview(result.content)))
    for name, value in rows:
        if value:
            table.add_row(name, value)
    return table


def cost_text(result: jobs_pb2.GenerationResult) -> str:
    """`12¢`, or `cost unknown` when the generator could not price it (not a real 0)."""
    return "cost unknown" if result.cost_unknown else f"{result.cost_cents}¢"


def estimate_text(estimate: jobs_pb2.Estimate) -> str:
    """`estimate 3-5¢, about 40 s`, or `cost unknown: model X has no price`
    (never a 0 that is not one), with the model that would write it."""
    if estimate.cost_unknown:
        text = f"cost unknown: {estimate.cost_unknown_reason or 'no price'}"
    elif estimate.low_cents == estimate.high_cents:
        text = f"estimate {estimate.low_cents}¢"
    else:
        text = f"estimate {estimate.low_cents}-{estimate.high_cents}¢"
    if estimate.HasField("expected_duration"):
        text += f", about {_about(estimate.expected_duration.ToTimedelta().total_seconds())}"
    if estimate.model:
        text += f" ({estimate.model} on {estimate.provider})" if estimate.provider else f" ({estimate.model})"
    return text


def _about(seconds: float) -> str:
    """A rough duration: `40 s`, `3 min`, `2.5 h`."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def stages_text(job: jobs_pb2.Job) -> str:
    """The declared stages with the finished ones ticked (`research ✓, outline ✓,
    drafting, editing`), from Job.stages and Job.stages_done; "" when none are declared."""
    return ", ".join(f"{name} ✓" if i < job.stages_done else name for i, name in enumerate(job.stages))


def _preview(text: str, limit: int = 300) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " … (show --content prints it all)"


def stats_table(
    stats: jobs_pb2.GetJobStatsResponse, usage: jobs_pb2.Usage | None = None, project: str = ""
) -> Table:
    """Counts by status and mode, cost, duration and failure rate of the jobs
    stored now (a deleted job is in none of them, so each figure names what it
    is of), then this month's spend from `usage`, which deletions do not lower."""
    table = Table(
        title="jobs stored now (deleted jobs not counted)", title_justify="left", box=None, pad_edge=False
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right")
    table.add_row("total jobs", str(stats.total_jobs))
    counts = {row.status: row.count for row in stats.by_status}
    for row in stats.by_status:
        table.add_row(styled(status_name(row.status)), str(row.count))
    for mode_row in stats.by_mode:
        table.add_row(f"mode {mode_name(mode_row.mode)}", str(mode_row.count))
    completed = counts.get(jobs_pb2.JOB_STATUS_COMPLETED, 0)
    failed = counts.get(jobs_pb2.JOB_STATUS_FAILED, 0)
    unknown = f", {stats.cost_unknown_jobs} of unknown cost left out" if stats.cost_unknown_jobs else ""
    table.add_row(
        "total cost", f"{stats.total_cost_cents}¢ (of {count(completed, 'completed job')}{unknown})"
    )
    duration = f"{stats.mean_duration_seconds:.2f} s" if completed else "none completed"
    table.add_row("mean duration", duration)
    rate = f"{stats.failure_rate:.1%} ({failed} of {count(completed + failed, 'finished job')})"
    table.add_row("failure rate", rate if completed + failed else "none finished")
    if usage is not None:
        spent = usage.spent_cents
        if project:
            spent = next((p.spent_cents for p in usage.projects if p.project == project), 0)
        table.add_row(f"spent in {usage.month} (UTC)", f"{spent}¢ (deleted jobs too)")
    return table


def usage_table(usage: jobs_pb2.Usage) -> Table:
    """Spend this month by project, each limit with what is left, and the queue against its cap."""
    table = Table(
        title=f"{usage.owner} · {usage.month} (UTC)", title_justify="left", box=None, pad_edge=False
    )
    table.add_column("spend", style="bold", no_wrap=True)
    table.add_column("spent", justify="right")
    table.add_column("limit", justify="right")
    table.add_column("left", justify="right")
    limits = {budget.project: budget for budget in usage.budgets}
    rows: list[tuple[str, int, jobs_pb2.Budget | None]] = [
        ("all projects", usage.spent_cents, limits.get(""))
    ]
    for spend in usage.projects:
        label = f"project {spend.project}" if spend.project else "no project"
        rows.append((label, spend.spent_cents, limits.get(spend.project) if spend.project else None))
    spent_in = {spend.project for spend in usage.projects}
    rows += [
        (f"project {b.project}", b.spent_cents, b)
        for b in usage.budgets
        if b.project and b.project not in spent_in
    ]
    # Jobs on an unpriced model are not in any figure: said apart, never as 0¢.
    n = usage.cost_unknown_jobs
    unknown = f" + {n} job{'s' if n != 1 else ''} of unknown cost" if n else ""
    for label, spent, budget in rows:
        limit = budget.monthly_limit_cents if budget else 0
        left = "[red]spent[/]" if budget and budget.exhausted else f"{limit - spent}¢" if limit else ""
        table.add_row(label, f"{spent}¢{unknown}", f"{limit}¢" if limit else "none", left)
        unknown = ""  # the whole spend's row only
    full = usage.queued_jobs >= usage.max_queued_jobs
    queued = f"[red]{usage.queued_jobs}[/]" if full else str(usage.queued_jobs)
    table.add_row(
        "queued jobs",
        queued,
        str(usage.max_queued_jobs),
        str(max(0, usage.max_queued_jobs - usage.queued_jobs)),
    )
    return table


def budget_line(budget: jobs_pb2.Budget) -> str:
    """One line saying what a limit now is."""
    scope = f"{budget.owner}'s project {budget.project!r}" if budget.project else budget.owner
    if not budget.monthly_limit_cents:
        return f"no monthly limit for {scope} (spent {budget.spent_cents}¢ this month)"
    state = ": [red]exhausted, new jobs are refused[/]" if budget.exhausted else ""
    return f"monthly limit for {scope}: {budget.monthly_limit_cents}¢, spent {budget.spent_cents}¢{state}"


def schedule_state_name(state: int) -> str:
    """SCHEDULE_STATE_PAUSED -> "paused"."""
    return schedules_pb2.ScheduleState.Name(state).removeprefix("SCHEDULE_STATE_").lower()  # type: ignore[arg-type]


def target_text(request: schedules_pb2.Schedule | templates_pb2.Template, width: int = 40) -> str:
    """What a schedule or template submits, in a few words."""
    if isinstance(request, schedules_pb2.Schedule):
        kind = request.WhichOneof("target")
        if kind == "template":
            return f"template {request.template}"
    else:
        kind = request.WhichOneof("request")
    if kind == "job":
        return f"{mode_name(request.job.mode)}: {subject(request.job.params, width)}"
    if kind == "bulk_job":
        return f"bulk {mode_name(request.bulk_job.mode)}: {count(len(request.bulk_job.items), 'item')}"
    return ""


def notification_line(note: bulk_pb2.Notification) -> str:
    """One notification on one line: when, what, and its webhook's fate."""
    line = f"{when(note.create_time)}  {note.message}"
    if note.delivered:
        line += " [dim](webhook delivered)[/]"
    elif note.delivery_attempts:
        line += f" [dim](webhook not delivered after {count(note.delivery_attempts, 'attempt')})[/]"
    return line


def notifications_table(notes: Iterable[bulk_pb2.Notification]) -> Table:
    """One row per notification, newest first; the message folds, never cut."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("MESSAGE", overflow="fold")  # names the job or bulk job
    for note in notes:
        table.add_row(when(note.create_time), note.message)
    return table


def bulk_detail(bulk: bulk_pb2.BulkJob) -> tuple[Table, Table]:
    """A bulk job's summary and its items."""
    summary = Table(box=None, show_header=False, pad_edge=False)
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    rows = [
        ("id", bulk.id),
        ("status", styled(bulk_status_name(bulk.status))),
        ("mode", mode_name(bulk.mode)),
        ("progress", f"{bulk.percentage:.0f}%"),
        (
            "items",
            f"{bulk.total_items} total: {bulk.completed_items} completed, {bulk.failed_items} failed, "
            f"{bulk.cancelled_items} cancelled, {bulk.remaining_items} left"
            + (f", {bulk.deleted_items} deleted" if bulk.deleted_items else ""),
        ),
        ("created", when(bulk.create_time)),
        ("started", when(bulk.start_time)),
        ("ended", when(bulk.end_time)),
        ("estimated completion", when(bulk.estimated_completion)),
        ("project", bulk.project),
        ("priority", priority_name(bulk.priority)),
        ("scheduled", when(bulk.schedule_time)),
        ("notify url", bulk.notify_url),
    ]
    rows += [("error", line) for line in bulk.error_summary]
    for name, value in rows:
        if value:
            summary.add_row(name, value)
    items = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("#", "JOB", "STATUS", "ERROR"):
        items.add_column(name, no_wrap=name != "ERROR")
    for item in bulk.items:
        error = f"{item.error.code}: {item.error.message}" if item.HasField("error") else ""
        items.add_row(str(item.queue_position), item.id, styled(status_name(item.status)), error)
    return summary, items


RECONNECTING = "reconnecting..."
# Opens a stream given the hook the client calls when it drops (with the
# error) and when the server answers again (with None).
Watch = Callable[[ReconnectHook], Iterable[E]]


def seconds(stamp: Timestamp) -> float:
    """A timestamp as seconds since the epoch; 0.0 when unset."""
    return stamp.seconds + stamp.nanos / 1e9


def clock_text(duration: float) -> str:
    """A duration as m:ss, or h:mm:ss from an hour on."""
    whole = max(int(duration), 0)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TimesColumn(ProgressColumn):
    """Time spent and, while the server has an estimate, time left (`0:12 ETA 0:30`),
    counted live between events from the task's `started`, `ended` and `eta`
    fields (seconds since the epoch, 0 when unknown)."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        now = time.time()
        started, ended, eta = (float(task.fields.get(name) or 0.0) for name in ("started", "ended", "eta"))
        spent = clock_text((ended or now) - started) if started else "-:--"
        left = f" ETA {clock_text(eta - now)}" if eta and not ended and eta > now else ""
        return Text(spent + left, style="progress.elapsed")


def _progress(console: Console) -> Progress:
    """The live row: id, status or stage, bar, percentage and times are never
    cut; the message (subject, attempt, project) takes what width is left."""
    return Progress(
        TextColumn("{task.fields[id]}", table_column=Column(no_wrap=True)),
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=10)),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10, max_width=40)),
        TaskProgressColumn(),
        TimesColumn(),
        TextColumn(
            "{task.fields[message]}",
            table_column=Column(no_wrap=True, overflow="ellipsis", ratio=2, min_width=1),
        ),
        console=console,
        transient=False,
        expand=True,
    )


def _follow(
    console: Console, watch: Watch[E], bar: Callable[[E], tuple[S, dict[str, Any]]], first_id: str
) -> S | None:
    """Show a live bar until the stream ends; `bar` turns an event into the
    state it carries and the bar's fields (total, completed, description,
    message, id, started, ended, eta). While the server is unreachable the
    message says so. Returns the last state seen."""
    last: S | None = None
    with _progress(console) as progress:
        task = progress.add_task("waiting", total=1, message="", id=first_id, started=0.0, ended=0.0, eta=0.0)
        message = ""

        def reconnecting(error: Exception | None) -> None:
            progress.update(task, message=RECONNECTING if error is not None else message)

        for event in watch(reconnecting):
            last, fields = bar(event)
            message = fields["message"]
            progress.update(task, **fields)
    return last


def attempt_text(job: jobs_pb2.Job) -> str:
    """The words `attempt 2 of 3` for a job past its first attempt; "" otherwise."""
    return f"attempt {job.attempt} of {job.max_attempts}" if job.attempt > 1 else ""


def _job_bar(event: jobs_pb2.JobEvent) -> tuple[jobs_pb2.Job, dict[str, Any]]:
    job = event.job
    progress = job.progress
    stage = progress.stage or status_name(job.status)
    # The stage is shown once, in its own column: the generator's message
    # often repeats it ("drafting Green tea").
    detail = progress.message.removeprefix(progress.stage).strip() or subject(job.params, 200)
    final = job.status in FINAL_JOB
    if final:
        stage = status_name(job.status)
    if job.status == jobs_pb2.JOB_STATUS_QUEUED and job.attempt > 1:
        stage = "retrying"  # waiting out the backoff after a failed attempt
    percentage = 100 if job.status == jobs_pb2.JOB_STATUS_COMPLETED else progress.percentage
    message = " · ".join(part for part in (attempt_text(job), detail) if part)
    return job, {
        "total": 100,
        "completed": percentage,
        "description": stage,
        "message": message,
        "id": job.id,
        "started": seconds(progress.started_at) or seconds(job.start_time),
        "ended": seconds(job.end_time) if final else 0.0,
        "eta": 0.0 if final else seconds(progress.estimated_completion),
    }


def bulk_counts(bulk: bulk_pb2.BulkJob) -> str:
    """`9 completed, 1 failed, 0 cancelled of 10` (and how many were deleted)."""
    text = (
        f"{bulk.completed_items} completed, {bulk.failed_items} failed, "
        f"{bulk.cancelled_items} cancelled of {bulk.total_items}"
    )
    return f"{text}, {bulk.deleted_items} deleted" if bulk.deleted_items else text


def _bulk_bar(event: bulk_pb2.BulkJobEvent) -> tuple[bulk_pb2.BulkJob, dict[str, Any]]:
    bulk = event.bulk_job
    final = bulk.status in (bulk_pb2.BULK_JOB_STATUS_COMPLETED, bulk_pb2.BULK_JOB_STATUS_CANCELLED)
    # Failures lead, so that a narrow terminal shows them as they happen, not at the end.
    failed = f"{bulk.failed_items} failed" if bulk.failed_items else ""
    counts = f"{bulk.completed_items} done, {bulk.remaining_items} left"
    return bulk, {
        "total": 100,
        "completed": bulk.percentage,  # the server's: a cancelled bulk job never reads 100
        "description": bulk_status_name(bulk.status),
        "message": " · ".join(part for part in (failed, bulk.project, counts) if part),
        "id": bulk.id,
        "started": seconds(bulk.start_time),
        "ended": seconds(bulk.end_time) if final else 0.0,
        "eta": 0.0 if final else seconds(bulk.estimated_completion),
    }


def follow_job(console: Console, watch: Watch[jobs_pb2.JobEvent], job_id: str = "") -> jobs_pb2.Job | None:
    """Show a job's progress as a live bar until it is final; the last job seen.

    `watch(hook)` opens the job's events, calling `hook` as the connection
    drops and comes back (GenJobsClient.watch's on_reconnect)."""
    return _follow(console, watch, _job_bar, job_id)


def follow_bulk(
    console: Console, watch: Watch[bulk_pb2.BulkJobEvent], bulk_id: str = ""
) -> bulk_pb2.BulkJob | None:
    """Show a bulk job's progress as a live bar until it is final; the last state seen."""
    return _follow(console, watch, _bulk_bar, bulk_id)


def outcome_line(job: jobs_pb2.Job) -> str:
    """One line saying how a job ended."""
    if job.status == jobs_pb2.JOB_STATUS_COMPLETED:
        title = f"“{job.result.title}” " if job.result.title else ""
        return (
            f"[green]completed[/]: {title}{count(job.result.word_count, 'word')}, {cost_text(job.result)} "
            f"(genjobs show {job.id} --content)"
        )
    if job.status == jobs_pb2.JOB_STATUS_FAILED:
        return f"[red]failed[/] after {count(job.attempt, 'attempt')}: {job.error.code}: {job.error.message}"
    if job.status == jobs_pb2.JOB_STATUS_CANCELLED:
        return "[dim]cancelled[/]"
    return styled(status_name(job.status))


def violations_text(violations: Sequence[tuple[str, str]]) -> str:
    """Field violations as `field: why; field: why`."""
    return "; ".join(f"{name}: {why}" for name, why in violations)
