"""`genjobs ops`: act on up to all of your matching jobs at once (RunBulkOperation)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from genjobs.client import render
from genjobs.client.cli.shared import (
    Mode,
    ModeOpt,
    Options,
    ProjectOpt,
    connected,
    print_result,
)

ops_app = typer.Typer(help="Act on up to all of your matching jobs at once.", no_args_is_help=True)


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
                print_result(opts, render.as_dict(preview))
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
        print_result(opts, {"job_ids": ids, "affected_count": len(ids)})
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
