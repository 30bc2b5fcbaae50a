"""Wiring in one place: every object of the server's domain and API built
complete, once, in dependency order, each given its collaborators when it is
made (no attribute is set on an object after it is built).

Three cycles run through `Jobs`; each is broken by a small callback handed
in at construction that reaches an object built later in `build` (none of
them is called before `build` has returned and the server serves):

- budgets <-> jobs: `Jobs` asks `Budgets` before queueing and `JobChanges`
  tells it of every change, and `Budgets` records the jobs it holds and releases through
  `JobChanges.record`: `Budgets` gets `record`, a callback to `JobChanges.record`.
- bulk jobs <-> jobs: `Bulks` works through `Jobs`, and `JobChanges` tells it of
  every item's change: it gets `item_changed`, a callback to `Bulks.item_changed`.
- dispatcher <-> jobs: `Jobs` offers new jobs to the dispatcher, which records
  through `JobChanges.record`, ticks the schedules (which submit through `Jobs`) and
  sweeps the bulk jobs: `Jobs` (and `JobChanges`) get `LaterDispatcher`, the
  `Wakeable` interface over the dispatcher. The dispatcher itself gets `JobChanges.record` directly,
  so its hot path has no extra call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genjobs.server.api import convert
from genjobs.server.api.servicers.bulk import BulkServicer
from genjobs.server.api.servicers.jobs import JobServicer
from genjobs.server.api.servicers.schedules import ScheduleServicer
from genjobs.server.api.servicers.templates import TemplateServicer
from genjobs.server.api.watch import StreamCap
from genjobs.server.dispatch.dispatcher import Dispatcher
from genjobs.server.dispatch.providers import GENERATOR, Policy, ProviderGate
from genjobs.server.generators import Generator, declared_catalog, declared_stages
from genjobs.server.model.progress import ProgressLink
from genjobs.server.model.records import Job
from genjobs.server.notify.ending import EndNotifications
from genjobs.server.notify.sender import Notifier
from genjobs.server.runtime.config import Settings
from genjobs.server.runtime.factories import make_notifier
from genjobs.server.services.budgets import Budgets
from genjobs.server.services.bulk import Bulks
from genjobs.server.services.changes import JobChanges
from genjobs.server.services.entitlement import Tiers
from genjobs.server.services.estimates import Estimates
from genjobs.server.services.events import EventHub
from genjobs.server.services.intake import Intake
from genjobs.server.services.jobs import Jobs, Wakeable
from genjobs.server.services.progress import ExternalProgress
from genjobs.server.services.queue_cap import QueueCap
from genjobs.server.services.remote import RemoteChanges
from genjobs.server.services.schedules import Schedules
from genjobs.server.services.templates import Templates
from genjobs.server.storage.budgets import BudgetStore
from genjobs.server.storage.database import Doc
from genjobs.server.storage.eventlog import EventLog
from genjobs.server.storage.providers import ProviderStore
from genjobs.server.storage.schedules import ScheduleStore
from genjobs.server.storage.store import Store


class LaterDispatcher(Wakeable):
    """The dispatcher's `Wakeable` side for `Jobs`, which is built before it
    (see the module's docstring): each call goes to `dispatcher()`."""

    def __init__(self, dispatcher: Callable[[], Wakeable]) -> None:
        self._dispatcher = dispatcher

    def offer(self, ck: int, oid: Any, owner: str = "", rank: int = 1, doc: Doc | None = None) -> None:
        """A job entered the ready lane (`doc`: as stored)."""
        self._dispatcher().offer(ck, oid, owner, rank, doc)

    def wake(self) -> None:
        """Look at the queue again."""
        self._dispatcher().wake()

    def waiting(self, at_us: int) -> None:
        """A job entered a waiting lane here, due at `at_us`."""
        self._dispatcher().waiting(at_us)

    def request_cancel(self, job_id: str) -> bool:
        """Stop `job_id` if it runs here; whether it did."""
        return self._dispatcher().request_cancel(job_id)

    def start_as_stored(self, doc: Doc) -> Doc | None:
        """The claim a job about to be stored may carry in its insert (None: store it queued)."""
        return self._dispatcher().start_as_stored(doc)

    def stored(self, job: Doc) -> None:
        """The job `start_as_stored` claimed is stored: run it."""
        self._dispatcher().stored(job)

    def alone(self) -> bool:
        """Whether this server leads and no other shares the database."""
        return self._dispatcher().alone()

    def not_stored(self, oid: Any) -> None:
        """The job `start_as_stored` claimed was not stored: let its lane go."""
        self._dispatcher().not_stored(oid)


@dataclass(frozen=True)
class Services:
    """The server's domain objects (and its dispatcher), built by `build`."""

    notifier: Notifier
    job_notifications: EndNotifications
    tiers: Tiers
    schedule_store: ScheduleStore
    templates: Templates
    budgets: Budgets
    jobs: Jobs
    bulks: Bulks
    intake: Intake
    schedules: Schedules
    dispatcher: Dispatcher
    progress: ExternalProgress
    remote: RemoteChanges  # other servers' changes for the streams open here


def build(
    settings: Settings,
    store: Store,
    hub: EventHub,
    event_log: EventLog,
    webhook_secret: str,
    generator: Generator,
    progress_link: ProgressLink,
    worker_id: str,
    loop: asyncio.AbstractEventLoop,
) -> Services:
    """Every domain object and the dispatcher, complete, in dependency order."""

    # The cycles' callbacks (see the module's docstring).
    def record(doc: Doc, kind: str) -> None:
        changes.record(doc, kind)

    def item_changed(job: Job, kind: str) -> None:
        bulks.item_changed(job, kind)

    notifier = make_notifier(settings, store, webhook_secret)
    gate = provider_gate(settings, store, generator)
    job_notifications = EndNotifications(store, notifier)
    tiers = Tiers(store.database.db)  # owners' stored tiers: who may have PRIORITY_HIGH
    schedule_store = ScheduleStore(store.database)
    templates = Templates(
        schedule_store, convert, settings.max_templates_per_owner, settings.max_template_bytes
    )
    cap = QueueCap(store.jobs, settings.max_queued_per_owner)
    budgets = Budgets(BudgetStore(store), record, cap)
    later = LaterDispatcher(lambda: dispatcher)
    # In this order: a bulk job's counts, the job's notification, its spend.
    listeners = [item_changed, job_notifications.job_changed, budgets.job_changed]
    changes = JobChanges(store, hub, event_log, worker_id, cap, later.waiting, listeners)
    jobs = Jobs(
        store,
        changes,
        settings.max_attempts,
        dispatcher=later,
        limits=budgets,
        cap=cap,
        tiers=tiers,
        notify_channels=notifier.channels,
        waiting=gate.waiting_reason,
    )
    bulks = Bulks(store, hub, jobs, job_notifications)
    estimates = Estimates(declared_catalog(generator), settings.generator, store.jobs)
    intake = Intake(jobs, bulks, templates, convert, estimates)
    schedules = Schedules(
        schedule_store,
        templates,
        tiers,
        intake,
        loop,
        settings.max_schedules_per_owner,
        settings.min_schedule_interval_seconds,
    )
    dispatcher = Dispatcher(
        store,
        generator,
        worker_id,
        record=changes.record_run,
        record_later=changes.record_run_later,
        lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds,
        retry_base_seconds=settings.retry_base_seconds,
        # Often enough that a job outlives its retention by at most a quarter.
        sweep_seconds=store.retention.sweep_seconds,
        tickers=[schedules.tick],
        concurrency=settings.concurrency,
        gap_seconds=settings.job_gap_seconds,
        sweepers=[bulks.recover, job_notifications.recover, budgets.recover],
        admit=budgets.admit,
        release=budgets.release,
        unlimited=budgets.unlimited,
        gate=gate,
    )
    progress = ExternalProgress(store, progress_link.tokens, changes.record)
    remote = RemoteChanges(store, hub, dispatcher, bulks.poll_remote)
    return Services(
        notifier=notifier,
        job_notifications=job_notifications,
        tiers=tiers,
        schedule_store=schedule_store,
        templates=templates,
        budgets=budgets,
        jobs=jobs,
        bulks=bulks,
        intake=intake,
        schedules=schedules,
        dispatcher=dispatcher,
        progress=progress,
        remote=remote,
    )


def provider_gate(settings: Settings, store: Store, generator: Generator) -> ProviderGate:
    """The gate over the generator's providers (its catalog's), or over the
    generator itself as one provider."""
    catalog = declared_catalog(generator)
    names: list[str] = [GENERATOR]
    provider_of: Callable[[str], str] = _the_generator
    limits: dict[str, tuple[int | None, int | None]] = {}
    if catalog is not None:
        names = list(catalog.providers.providers)
        provider_of = catalog.provider_of
        limits = {name: (p.rpm, p.tpm) for name, p in catalog.providers.providers.items()}
    policy = Policy(
        settings.provider_failure_threshold,
        settings.provider_probe_seconds,
        settings.provider_max_outage_seconds,
        settings.retry_base_seconds,
    )
    return ProviderGate(ProviderStore(store.database), names, provider_of, policy, limits)


def _the_generator(model: str) -> str:
    """A generator without providers is its every model's one provider."""
    return GENERATOR


@dataclass(frozen=True)
class Servicers:
    """The four gRPC servicers, which the HTTP face serves too."""

    jobs: JobServicer
    bulk: BulkServicer
    schedules: ScheduleServicer
    templates: TemplateServicer

    def in_order(self) -> tuple[object, ...]:
        """In the order of `app.SERVICE_NAMES`: JobService, BulkService, ScheduleService, TemplateService."""
        return (self.jobs, self.bulk, self.schedules, self.templates)


def servicers(services: Services, hub: EventHub, streams: StreamCap, generator: Generator) -> Servicers:
    """The servicers over `services`: protobuf in, a domain call, protobuf out."""
    return Servicers(
        jobs=JobServicer(
            services.jobs,
            services.intake,
            hub,
            services.progress,
            services.budgets,
            streams,
            declared_stages(generator),
        ),
        bulk=BulkServicer(services.bulks, services.intake, hub, streams),
        schedules=ScheduleServicer(services.schedules),
        templates=TemplateServicer(services.templates),
    )
