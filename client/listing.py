"""The listing tables (`ls`, `bulk ls`, `schedule ls`, `template ls`), fitted to
the terminal's width: a header is never cut. When the columns do not fit, the
least important ones are left out, and the flexible ones (a subject, a project)
share what room is left, their text ending in "…" when longer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.console import JustifyMethod
from rich.table import Table
from rich.text import Text

from genjobs.client.render import (
    bulk_status_name,
    schedule_state_name,
    short_when,
    status_name,
    styled,
    subject,
    target_text,
    when,
    zone_name,
)
from genjobs.v1 import bulk_pb2, jobs_pb2, schedules_pb2, templates_pb2

GAP = 2  # between two columns of a borderless table (one space of padding each side)


@dataclass(frozen=True)
class Col:
    """A listing's column: `rank` says what is left out first (the highest);
    `share` > 0 makes it flexible (cut to its share of the room left)."""

    name: str
    rank: int
    share: int = 0
    justify: JustifyMethod = "left"


def _width(cell: str) -> int:
    return Text.from_markup(cell).cell_len


def fitted(width: int, columns: Sequence[Col], rows: Sequence[Sequence[str]]) -> Table:
    """A borderless table at most `width` wide, with every header whole: the
    fixed columns as wide as their widest cell, the flexible ones at least as
    wide as their header; columns of the highest rank go while it does not fit."""
    natural = [max([len(col.name), *(_width(row[i]) for row in rows)]) for i, col in enumerate(columns)]
    kept = list(range(len(columns)))

    def needed(indexes: list[int]) -> int:
        least = sum(natural[i] if not columns[i].share else len(columns[i].name) for i in indexes)
        return least + GAP * (len(indexes) - 1)

    while len(kept) > 1 and needed(kept) > width:
        kept.remove(max(kept, key=lambda i: columns[i].rank))
    table = Table(box=None, header_style="bold", pad_edge=False)
    flexible = [i for i in kept if columns[i].share]
    # The flexible columns share the room left by their shares, each at least
    # as wide as its header (the widest gives up what that takes).
    room = width - sum(natural[i] for i in kept if not columns[i].share) - GAP * (len(kept) - 1)
    shares = sum(columns[i].share for i in flexible) or 1
    sizes = {i: max(room * columns[i].share // shares, len(columns[i].name)) for i in flexible}
    if flexible and sum(sizes.values()) > room:
        widest = max(flexible, key=lambda i: sizes[i])
        sizes[widest] -= sum(sizes.values()) - room
    for i in kept:
        col = columns[i]
        if col.share:
            table.add_column(
                col.name, no_wrap=True, overflow="ellipsis", max_width=sizes[i], justify=col.justify
            )
        else:
            table.add_column(col.name, no_wrap=True, min_width=natural[i], justify=col.justify)
    for row in rows:
        table.add_row(*(row[i] for i in kept))
    return table


def created_header() -> str:
    """`CREATED CET`: the listings' short times are in this zone."""
    return f"CREATED {zone_name()}"


def jobs_table(jobs: Iterable[jobs_pb2.Job], width: int = 200) -> Table:
    """One row per job: id, status, progress, created, subject, project. At
    80 columns the subject and project give way, then the project goes."""
    columns = [
        Col("ID", 0),
        Col("STATUS", 1),
        Col("DONE", 2, justify="right"),
        Col(created_header(), 4),
        Col("SUBJECT", 3, share=3),
        Col("PROJECT", 5, share=1),
    ]
    rows = [
        (
            job.id,
            styled(status_name(job.status)),
            f"{job.progress.percentage}%",
            short_when(job.create_time),
            subject(job.params, width),
            job.project,
        )
        for job in jobs
    ]
    return fitted(width, columns, rows)


def bulk_table(bulks: Iterable[bulk_pb2.BulkJob], width: int = 200) -> Table:
    """One row per bulk job with its counts; when narrow, the creation time goes first."""
    columns = [
        Col("ID", 0),
        Col("STATUS", 1),
        Col("COMPLETED", 2, justify="right"),
        Col("FAILED", 3, justify="right"),
        Col("LEFT", 4, justify="right"),
        Col(created_header(), 6),
        Col("PROJECT", 5, share=1),
    ]
    rows = [
        (
            bulk.id,
            styled(bulk_status_name(bulk.status)),
            f"{bulk.completed_items}/{bulk.total_items}",
            str(bulk.failed_items),
            str(bulk.remaining_items),
            short_when(bulk.create_time),
            bulk.project,
        )
        for bulk in bulks
    ]
    return fitted(width, columns, rows)


def schedules_table(schedules: Iterable[schedules_pb2.Schedule], width: int = 200) -> Table:
    """One row per schedule: id, state, cron and its zone, next tick (in the
    schedule's zone), runs, what it submits, its last error."""
    columns = [
        Col("ID", 0),
        Col("STATE", 1),
        Col("CRON", 3),
        Col("NEXT RUN", 2),
        Col("RUNS", 4, justify="right"),
        Col("SUBMITS", 5, share=2),
        Col("LAST ERROR", 6, share=1),
    ]
    rows = []
    for schedule in schedules:
        state = schedule_state_name(schedule.state)
        rows.append(
            (
                schedule.id,
                f"[{'green' if state == 'active' else 'yellow'}]{state}[/]",
                schedule.cron + (f" {schedule.time_zone}" if schedule.time_zone else ""),
                short_when(schedule.next_run_time, schedule.time_zone, zone=True),
                str(schedule.run_count),
                target_text(schedule),
                f"[red]{schedule.last_error}[/]" if schedule.last_error else "",
            )
        )
    return fitted(width, columns, rows)


def templates_table(templates: Iterable[templates_pb2.Template], width: int = 200) -> Table:
    """One row per template: name, when it last changed, what it submits."""
    columns = [Col("NAME", 0), Col("UPDATED", 2), Col("SUBMITS", 1, share=1)]
    rows = [(t.name, when(t.update_time), target_text(t)) for t in templates]
    return fitted(width, columns, rows)
