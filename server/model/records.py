"""The typed records of the domain: a job, a bulk job, and a submission (the
validated input a SubmitJob, a bulk item, a retry or a schedule's tick turns
into a job). Storage converts them to and from documents
(server/storage/records.py), the api to and from protobuf
(server/api/convert.py); each in one place.

The rules that belong to a record live on it: what a retry keeps
(`Job.retry_submission`), whether a cost is known (`Result.cost_unknown`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genjobs.server.model.states import FINAL, BulkStatus, Status
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.model.vocabulary import Lane, Mode, Priority


@dataclass(frozen=True, slots=True)
class Params:
    """What to generate: a job's generation parameters as submitted (normalized)."""

    topic: str = ""
    keywords: tuple[str, ...] = ()
    word_count: int = 0
    tone: str = ""
    source_text: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobError:
    """Why an attempt or a job failed."""

    code: str = ""
    category: str = ""
    message: str = ""
    retryable: bool = False
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    """A running job's last progress report."""

    percentage: int = 0
    stage: str = ""
    stage_progress: int = 0
    message: str = ""
    started_at_us: int = 0
    estimated_completion_us: int = 0
    elapsed_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Result:
    """What a completed job produced."""

    content: str = ""
    title: str = ""
    word_count: int = 0
    cost_cents: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def cost_unknown(self) -> bool:
        """Whether the generator could not price it (its model has no price):
        generators say so in metadata, and stored results keep it there."""
        return self.metadata.get("cost_unknown", "") == "true"


@dataclass(frozen=True, slots=True)
class Origin:
    """What the server itself sets on a job or bulk job it is asked for: the
    schedule whose tick asks (with that tick's own request key) and the
    template the request names."""

    schedule_id: str = ""
    template: str = ""
    request_key: str = ""  # a schedule tick's: a repeated tick is one job

    @property
    def keyed(self) -> bool:
        """Whether a repeat of it is answered with the first (a tick's key)."""
        return bool(self.request_key)


NO_ORIGIN = Origin()  # a caller's own request: the server sets nothing on it


@dataclass(frozen=True, slots=True)
class Submission:
    """A new job as validated and decided, before it is stored: what SubmitJob,
    a bulk item, a retry or a schedule's tick asks for."""

    owner: str
    mode: Mode
    params: Params
    project: str = ""
    request_id: str = ""
    max_attempts: int = 3
    priority: Priority = Priority.NORMAL
    schedule_us: int = 0  # not before then (0: now)
    targets: tuple[NotifyTarget, ...] = ()
    retry_of: str = ""
    bulk_job_id: str = ""
    queue_position: int = 0
    request_key: str = ""  # "" derives one from owner and request_id (storage)
    schedule_id: str = ""  # the schedule whose tick created it
    template: str = ""  # the template it was submitted from


@dataclass(frozen=True, slots=True)
class Job:
    """A stored job, as every layer above storage reads it."""

    id: str
    owner: str
    mode: Mode
    params: Params
    status: Status
    project: str = ""
    priority: Priority = Priority.NORMAL
    lane: str = Lane.NONE  # a stored lane (Lane's values)
    attempt: int = 0
    max_attempts: int = 0
    retry_of: str = ""
    retried_by: str = ""
    bulk_job_id: str = ""
    queue_position: int = 0
    request_id: str = ""
    cancel_requested: bool = False
    created_us: int = 0
    updated_us: int = 0
    started_us: int = 0
    ended_us: int = 0
    schedule_us: int = 0
    archived_us: int = 0  # when it moved to the archive (0: live)
    error: JobError | None = None
    attempt_errors: tuple[JobError, ...] = ()
    targets: tuple[NotifyTarget, ...] = ()
    schedule_id: str = ""
    template: str = ""
    progress: Progress | None = None
    wait_reason: str = ""  # why a queued job is not started (budgets)
    result: Result | None = None
    seq: int = 0
    notify_pending: bool = False  # ended, its notification not stored yet (notify/ending.py)
    spend_pending: bool = False  # completed, its cost not counted yet (services/budgets.py)

    @property
    def final(self) -> bool:
        """Whether the job has ended (completed, failed or cancelled)."""
        return self.status in FINAL

    def target(self, channel: str) -> str:
        """The address of the job's `channel` target ("" when it has none)."""
        return next((t.address for t in self.targets if t.channel == channel), "")

    @property
    def cost_cents(self) -> int:
        """What it cost (0 until it completed)."""
        return self.result.cost_cents if self.result is not None else 0

    @property
    def spend(self) -> Spend:
        """Its cost as its owner's month counts it."""
        unknown = self.result is not None and self.result.cost_unknown
        return Spend(self.id, self.owner, self.project, self.cost_cents, self.ended_us, unknown)

    def retry_submission(self, request_id: str, default_attempts: int) -> Submission:
        """THE rule of what a retry keeps: the same owner, project, mode, params,
        notification targets, bulk job and place in it, schedule and template,
        and priority (its schedule_time has passed, so not that); attempts
        start again. Who may keep HIGH is the caller's entitlement (services)."""
        return Submission(
            owner=self.owner,
            mode=self.mode,
            params=self.params,
            project=self.project,
            request_id=request_id,
            max_attempts=self.max_attempts or default_attempts,
            priority=self.priority,
            targets=self.targets,
            retry_of=self.id,
            bulk_job_id=self.bulk_job_id,
            queue_position=self.queue_position,
            # Still a run of its schedule, from its template (ListJobs by schedule_id lists it).
            schedule_id=self.schedule_id,
            template=self.template,
        )


@dataclass(frozen=True, slots=True)
class Spend:
    """A completed job's cost, counted once in its owner's month (budgets)."""

    job_id: str
    owner: str
    project: str
    cost_cents: int
    ended_us: int
    cost_unknown: bool = False  # its model has no price: counted apart, never as 0


@dataclass(frozen=True, slots=True)
class Budget:
    """A monthly spend limit on an owner (project "": all their spend), as stored."""

    owner: str
    project: str = ""
    limit_cents: int = 0  # 0: none (removed)
    updated_us: int = 0
    changed_us: int = 0  # when it or its hold was last written: servers re-read what changed
    holding: bool = False  # it holds queued jobs back (in the budget lane)
    hold_seq: int = 0  # bumped by each hold: a release clears only the hold it read


@dataclass(frozen=True, slots=True)
class MonthSpend:
    """An owner's spend in one month: in all, and by project name."""

    spent_cents: int = 0
    projects: dict[str, int] = field(default_factory=dict)
    cost_unknown_jobs: int = 0  # completed jobs whose cost is unknown (not in spent_cents)


@dataclass(frozen=True, slots=True)
class Template:
    """An owner's named request, SubmitJob's or CreateBulkJob's (`kind`), kept serialized."""

    owner: str
    name: str
    kind: str  # "job" or "bulk_job": which request `request` holds
    request: bytes
    created_us: int = 0
    updated_us: int = 0


@dataclass(frozen=True, slots=True)
class Schedule:
    """A stored schedule: a request (or a template's name) submitted at each
    tick of `cron`, and how its ticks have gone."""

    id: str
    owner: str
    cron: str
    kind: str  # "job", "bulk_job" or "template": what each tick submits
    time_zone: str = ""
    request: bytes = b""  # the request it keeps (kind "job" or "bulk_job")
    template: str = ""  # the template it names (kind "template")
    state: str = "ACTIVE"
    next_run_us: int = 0  # 0 while paused
    last_run_us: int = 0
    last_job_id: str = ""
    last_bulk_job_id: str = ""
    run_count: int = 0
    last_error: str = ""
    failing: str = ""  # the reason its ticks fail (or run at NORMAL), "" while they run
    failed_ticks: int = 0
    failing_since_us: int = 0
    good_ticks: int = 0
    logged: str = ""  # the state last logged: a log line per change, not per tick
    logged_reason: str = ""
    logged_us: int = 0
    request_id: str = ""
    request_key: str = ""
    created_us: int = 0
    updated_us: int = 0


@dataclass(frozen=True, slots=True)
class BulkItem:
    """One item of a bulk job as its bulk job shows it: the current job at a position."""

    id: str
    queue_position: int
    status: Status
    error: JobError | None = None


@dataclass(frozen=True, slots=True)
class BulkJob:
    """A stored bulk job (its items are jobs; its counts are the bulk service's)."""

    id: str
    owner: str
    mode: Mode
    status: BulkStatus
    project: str = ""
    priority: Priority = Priority.NORMAL
    total: int = 0
    request_id: str = ""
    created_us: int = 0
    started_us: int = 0
    ended_us: int = 0
    schedule_us: int = 0
    targets: tuple[NotifyTarget, ...] = ()
    schedule_id: str = ""
    template: str = ""
    seq: int = 0

    def target(self, channel: str) -> str:
        """The address of the bulk job's `channel` target ("" when it has none)."""
        return next((t.address for t in self.targets if t.channel == channel), "")
