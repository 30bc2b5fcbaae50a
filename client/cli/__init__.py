"""`genjobs`: every JobService and BulkService operation as a one-line command.

Target and token come from flags or GENJOBS_TARGET / GENJOBS_TOKEN; with no
token, a server started by `make run` in this folder is found through its data
dir (GENJOBS_DATA_DIR, default ./.genjobs) and a token for user `dev` is made.
Output is aligned tables, or with `-o json` one JSON document with the .proto
field names. Errors print one line and exit 1 (usage errors exit 2).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperOption

from genjobs.client import render
from genjobs.client.cli import account, bulk, jobs, notifications, ops, schedules, templates
from genjobs.client.cli.shared import DEFAULT_TARGET, Options, Output
from genjobs.client.cli.shared import parse_at as parse_at  # named here too, as before the split

app = typer.Typer(
    help="Queue, watch and steer AI content-generation jobs on a genjobs server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    # -h as well as --help, on every command and group (children inherit it).
    context_settings={"help_option_names": ["-h", "--help"]},
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


DISTRIBUTIONS = ("genjobs", "genjobs-client")  # the package's name now, and once the client ships alone


def version_text() -> str:
    """`genjobs 0.1.0`: the installed distribution's version, whichever name it has."""
    for name in DISTRIBUTIONS:
        try:
            return f"genjobs {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "genjobs (version unknown: not installed as a package)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


_shown_type = TyperOption.display_type_rich


def _flag_shows_no_value(self: TyperOption, ctx: Any) -> str | None:
    """An on/off flag takes no value, so its help shows none (typer would print `<bool>`)."""
    return None if self.is_flag else _shown_type(self, ctx)


TyperOption.display_type_rich = _flag_shows_no_value  # type: ignore[method-assign]


@app.callback()
def main_options(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option("--target", "-t", envvar="GENJOBS_TARGET", help="host:port of the server")
    ] = DEFAULT_TARGET,
    token: Annotated[
        str, typer.Option("--token", envvar="GENJOBS_TOKEN", help="bearer token", show_default=False)
    ] = "",
    output: Annotated[
        Output, typer.Option("--output", "-o", metavar="FORMAT", help="table or json")
    ] = Output.table,
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
    utc: Annotated[bool, typer.Option("--utc", envvar="GENJOBS_UTC", help="show times in UTC")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """genjobs command line."""
    # Consoles made per invocation, so that they write to the streams of the moment.
    ctx.obj = Options(target, token, output, data_dir, Console(), Console(stderr=True), tls, ca_file, utc)
    render.use_zone(utc)


GLOBAL_OPTIONS = ("-o", "--output", "-t", "--target", "--token", "--data-dir")
GLOBAL_FLAGS = ("--utc",)  # global options that take no value


def globals_first(argv: list[str]) -> list[str]:
    """Move global options given after the command (`genjobs ls -o json`) to the front."""
    front: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        name = arg.split("=", 1)[0]
        if arg in GLOBAL_FLAGS and "--" not in rest:
            front.append(arg)
        elif name in GLOBAL_OPTIONS and "--" not in rest:
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
