"""`genjobs`: every JobService and BulkService operation as a one-line command.

Target and token come from flags or GENJOBS_TARGET / GENJOBS_TOKEN; with no
token, a server started by `make run` in this folder is found through its data
dir (GENJOBS_DATA_DIR, default ./.genjobs) and a token for user `dev` is made.
Output is aligned tables, or with `-o json` one JSON document with the .proto
field names. Errors print one line and exit 1 (usage errors exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from genjobs.client.cli import account, bulk, jobs, notifications, ops, schedules, templates
from genjobs.client.cli.shared import DEFAULT_TARGET, Options, Output
from genjobs.client.cli.shared import parse_at as parse_at  # named here too, as before the split

app = typer.Typer(
    help="Queue, watch and steer AI content-generation jobs on a genjobs server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# The top-level commands are the root app's own (as `@app.command()` would make
# them), in the order `genjobs --help` lists them; the groups follow.
for commands in (jobs.commands, notifications.commands, account.commands):
    app.registered_commands.extend(commands.registered_commands)
app.add_typer(bulk.bulk_app, name="bulk")
app.add_typer(ops.ops_app, name="ops")
app.add_typer(schedules.schedule_app, name="schedule")
app.add_typer(templates.template_app, name="template")
app.add_typer(account.budget_app, name="budget")
app.add_typer(account.tier_app, name="tier")


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
