"""`genjobs schedule`: a job or bulk job made on a cron schedule."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from genjobs.client import listing, render
from genjobs.client.cli.request_flags import (
    AttemptsFlag,
    BulkItemsFlag,
    ExtraFlag,
    FileFlag,
    KeywordFlag,
    ModeFlag,
    NotifyEmailFlag,
    NotifyUrlFlag,
    ProjectFlag,
    SourceFlag,
    ToneFlag,
    TopicFlag,
    WordsFlag,
    generation_params,
    stored_request,
)
from genjobs.client.cli.shared import (
    Options,
    connected,
    print_listing,
    print_result,
)
from genjobs.client.client import GenJobsClient

schedule_app = typer.Typer(help="Schedules: a job or bulk job made on a cron schedule.", no_args_is_help=True)


@schedule_app.command("create")
def schedule_create(
    ctx: typer.Context,
    cron: Annotated[
        str, typer.Option(help="minute hour day month weekday, or a first field of seconds: '30 */5 * * * *'")
    ],
    tz: Annotated[str, typer.Option("--tz", help="the IANA time zone of the cron [default: UTC]")] = "",
    template: Annotated[str, typer.Option("--template", help="run this template as it is then")] = "",
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
        target = stored_request(
            opts,
            items,
            file,
            mode,
            generation_params(opts, topic, keyword, word_count, tone, source_text, extra),
            project=project,
            max_attempts=max_attempts,
            notify_url=notify_url,
            notify_email=notify_email,
        )
    with connected(ctx) as client:
        schedule = client.create_schedule(cron, time_zone=tz, request_id=request_id, **target)
    if opts.json:
        print_result(opts, render.as_dict(schedule))
    else:
        next_run = render.when(schedule.next_run_time, schedule.time_zone)
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
    print_listing(opts, "schedules", schedules, listing.schedules_table, "no schedules")


ScheduleIdArg = Annotated[str, typer.Argument(metavar="ID", help="a schedule id")]


def _schedule_action(ctx: typer.Context, schedule_id: str, verb: str, act: Any) -> None:
    opts: Options = ctx.obj
    with connected(ctx) as client:
        schedule = act(client, schedule_id)
    if opts.json:
        print_result(opts, render.as_dict(schedule) if schedule is not None else {"id": schedule_id})
    elif schedule is None:
        opts.console.print(f"{verb} schedule {schedule_id}")
    else:
        next_run = render.when(schedule.next_run_time, schedule.time_zone)
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
