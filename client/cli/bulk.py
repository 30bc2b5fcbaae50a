"""`genjobs bulk`: bulk jobs, 10 to 50 articles queued and steered as one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from genjobs.client import listing, render
from genjobs.client.cli.request_flags import TemplateFlag, bulk_request
from genjobs.client.cli.shared import (
    AtOpt,
    Mode,
    Options,
    PriorityOpt,
    ProjectOpt,
    YesOpt,
    at_time,
    confirm,
    connected,
    print_estimate,
    print_listing,
    print_result,
    priority_value,
)
from genjobs.client.client import GenJobsClient

bulk_app = typer.Typer(help="Bulk jobs: 10 to 50 articles queued and steered as one.", no_args_is_help=True)


ItemsArg = Annotated[
    Path | None, typer.Argument(help="CSV with a header row, or JSON lines (- for stdin)", show_default=False)
]


@bulk_app.command("create")
def bulk_create(
    ctx: typer.Context,
    file: ItemsArg = None,
    mode: Annotated[
        Mode | None,
        typer.Option("--mode", "-m", metavar="MODE", help="topic, keywords, trends or spin [default: topic]"),
    ] = None,
    project: ProjectOpt = "",
    request_id: Annotated[str, typer.Option(help="makes a retried create return the same bulk job")] = "",
    notify_url: Annotated[str, typer.Option(help="receives a signed POST when it completes")] = "",
    notify_email: Annotated[str, typer.Option(help="gets a mail when it completes")] = "",
    template: TemplateFlag = "",
    priority: PriorityOpt = None,
    at: AtOpt = "",
    watch: Annotated[bool, typer.Option("--watch", "-w", help="then follow its progress")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="queue nothing: check it and print what it would cost and take")
    ] = False,
) -> None:
    """Queue 10 to 50 articles as one bulk job, from a CSV or JSON-lines file (or a template)."""
    opts: Options = ctx.obj
    request = bulk_request(
        opts,
        file,
        mode,
        project=project,
        request_id=request_id,
        notify_url=notify_url,
        notify_email=notify_email,
        template=template,
        priority=priority_value(priority),
    )
    when = at_time(opts, at)
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
            validate_only=dry_run,
        )
        if dry_run:
            print_estimate(opts, bulk, f"bulk job of {render.count(bulk.total_items, 'item')}")
            return
        if watch:
            _watch_bulk(opts, client, bulk.id)
            return
    if opts.json:
        print_result(opts, render.as_dict(bulk))
    else:
        opts.console.print(
            f"queued bulk job {bulk.id} with {render.count(bulk.total_items, 'item')}"
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
    print_listing(opts, "bulk_jobs", bulks, listing.bulk_table, "no bulk jobs")


BulkIdArg = Annotated[str, typer.Argument(metavar="ID", help="a bulk job id")]


@bulk_app.command("show")
def bulk_show(ctx: typer.Context, bulk_id: BulkIdArg) -> None:
    """Show a bulk job: counts, estimate, errors, and every item."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        bulk = client.get_bulk(bulk_id)
    if opts.json:
        print_result(opts, render.as_dict(bulk))
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
            print_result(opts, render.as_dict(last))
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
        print_result(opts, render.as_dict(bulk))
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
def bulk_cancel(ctx: typer.Context, bulk_id: BulkIdArg, yes: YesOpt = False) -> None:
    """Cancel the queued items and stop the running one (asks first, unless --yes)."""
    confirm(ctx.obj, yes, f"cancel bulk job {bulk_id} (its queued items; a running one is stopped)")
    _bulk_action(ctx, bulk_id, "cancelled", lambda client, i: client.cancel_bulk(i))
