"""`genjobs template`: saved requests to submit with overrides."""

from __future__ import annotations

from typing import Annotated

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

template_app = typer.Typer(help="Templates: saved requests to submit with overrides.", no_args_is_help=True)


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
        template, created = client.save_template(name, **target)
    if opts.json:
        print_result(opts, render.as_dict(template))
    else:
        done = "saved" if created else "updated"
        opts.console.print(f"{done} template {name} ({render.target_text(template)})")


@template_app.command("ls")
def template_list(ctx: typer.Context) -> None:
    """List your templates by name."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        templates = list(client.iter_templates())
    print_listing(opts, "templates", templates, listing.templates_table, "no templates")


@template_app.command("rm")
def template_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="its name")]) -> None:
    """Delete a template (schedules naming it create nothing until it is saved again)."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        client.delete_template(name)
    if opts.json:
        print_result(opts, {"name": name})
    else:
        opts.console.print(f"deleted template {name}")
