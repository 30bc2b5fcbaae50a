"""`genjobs notifications`: work that finished, listed or followed as it arrives."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated

import typer

from genjobs.client import render
from genjobs.client.cli.shared import Options, connected, print_result
from genjobs.client.client import GenJobsClient, Unavailable
from genjobs.v1 import bulk_pb2

# Not a group: the root app (client.cli) takes this command as its own.
commands = typer.Typer()


@commands.command("notifications")
def notifications(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="at most this many of the newest", min=1)] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", help="then print new ones as they arrive, until Ctrl-C")
    ] = False,
    interval: Annotated[float, typer.Option(help="seconds between two looks for new ones", min=0.1)] = 2.0,
) -> None:
    """Your notifications (work that finished), newest first; --follow waits for more."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        recent = list(client.iter_notifications(limit=limit))
        if not follow:
            if opts.json:
                print_result(opts, {"notifications": [render.as_dict(n) for n in recent]})
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
