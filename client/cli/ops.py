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
    YesOpt,
    confirm,
    connected,
    print_result,
)
from genjobs.client.client import GenJobsClient
from genjobs.v1 import jobs_pb2

ops_app = typer.Typer(help="Act on up to all of your matching jobs at once.", no_args_is_help=True)


# name: (operation, verb of the preview, verb of the result, whether it asks first)
OPERATIONS = {
    "retry-failed": ("RETRY_ALL_FAILED", "retry", "retried", False),
    "cancel-queued": ("CANCEL_ALL_QUEUED", "cancel", "cancelled", True),
    "clean-completed": ("DELETE_ALL_COMPLETED", "delete", "deleted", True),
}
OPERATION_HELP = {
    "retry-failed": "Retry every failed job (each failed job is retried once).",
    "cancel-queued": "Cancel every queued job (asks first, unless --yes).",
    "clean-completed": "Delete every completed job and its history (asks first, unless --yes).",
}


def _already_retried(client: GenJobsClient, scope: dict[str, Any], retried: int) -> int:
    """How many failed jobs in the scope retry-failed leaves alone: those retried once already."""
    failed = client.list(
        page_size=1,
        statuses=[render.status_name(jobs_pb2.JOB_STATUS_FAILED)],
        bulk_job_id=scope["bulk_job_id"],
        modes=scope["modes"],
        project=scope["project"],
    )
    return max(failed.total_size - retried, 0)


def _preview_line(verb: str, preview: Any, skipped: int) -> str:
    """`would retry 2 jobs (e.g. ID, ID); 1 failed job skipped: already retried`."""
    sample = f" (e.g. {', '.join(preview.job_ids)})" if preview.job_ids else ""
    line = f"would {verb} {render.count(preview.affected_count, 'job')}{sample}"
    if skipped:
        line += f"; {render.count(skipped, 'failed job')} skipped: already retried"
    return line


def _operation(ctx: typer.Context, name: str, scope: dict[str, Any], dry_run: bool, yes: bool) -> None:
    opts: Options = ctx.obj
    operation, verb, done, asks = OPERATIONS[name]
    with connected(ctx) as client:
        preview = client.run_bulk_operation(operation, validate_only=True, **scope)
        skipped = (
            _already_retried(client, scope, preview.affected_count) if operation == "RETRY_ALL_FAILED" else 0
        )
        if dry_run:
            if opts.json:
                print_result(opts, {**render.as_dict(preview), "skipped_already_retried": skipped})
            else:
                opts.console.print(_preview_line(verb, preview, skipped))
            return
        if asks and preview.affected_count:
            target = "completed job" if operation == "DELETE_ALL_COMPLETED" else "queued job"
            confirm(opts, yes, f"{verb} {render.count(preview.affected_count, target)}")
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
        note = f"; {render.count(skipped, 'failed job')} skipped: already retried" if skipped else ""
        opts.console.print(f"{done} {render.count(len(ids), 'job')}{note}")


OpsBulkOpt = Annotated[str, typer.Option("--bulk", help="only the items of this bulk job")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", "-n", help="count and sample, change nothing")]


def _operation_command(name: str) -> Any:
    if OPERATIONS[name][3]:

        def asking(
            ctx: typer.Context,
            bulk: OpsBulkOpt = "",
            mode: ModeOpt = None,
            project: ProjectOpt = "",
            dry_run: DryRunOpt = False,
            yes: YesOpt = False,
        ) -> None:
            _operation(ctx, name, _scope(bulk, mode, project), dry_run, yes)

        return asking

    def command(
        ctx: typer.Context,
        bulk: OpsBulkOpt = "",
        mode: ModeOpt = None,
        project: ProjectOpt = "",
        dry_run: DryRunOpt = False,
    ) -> None:
        _operation(ctx, name, _scope(bulk, mode, project), dry_run, yes=True)

    return command


def _scope(bulk: str, mode: list[Mode] | None, project: str) -> dict[str, Any]:
    return {"bulk_job_id": bulk, "modes": [m.value for m in mode or []], "project": project}


for _name in OPERATIONS:
    ops_app.command(_name, help=OPERATION_HELP[_name])(_operation_command(_name))
