"""What an owner may spend and run: `genjobs usage`, `genjobs budget set` and
`genjobs tier set` (the last two for admin tokens)."""

from __future__ import annotations

from typing import Annotated

import typer

from genjobs.client import render
from genjobs.client.cli.shared import Options, connected, print_result

# Not a group: the root app (client.cli) takes `usage` as its own.
commands = typer.Typer()
budget_app = typer.Typer(help="Monthly spending limits (admin tokens).", no_args_is_help=True)
tier_app = typer.Typer(
    help="Owners' stored tiers: who may have PRIORITY_HIGH (admin tokens).", no_args_is_help=True
)


@commands.command("usage")
def usage(
    ctx: typer.Context,
    owner: Annotated[str, typer.Option(help="whose usage (admins only; default: yours)")] = "",
) -> None:
    """Spend this month (UTC) by project, your limits, and queued jobs against the cap."""
    opts: Options = ctx.obj
    with connected(ctx) as client:
        result = client.usage(owner)
    print_result(opts, render.as_dict(result), render.usage_table(result))


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
