"""The dispatcher: one thread that claims jobs, and up to `concurrency` runs at
once across the deployment (one, by default).

Replicas elect it through a lease in `leases`; the elected one claims the
next ready job with one atomic update on `_id`, runs it through the
generator on one of `concurrency` long-lived lane threads (so that
housekeeping and schedules' ticks go on while a job runs, and a run costs no
thread start), and records the outcome with writes fenced by the
job's lease epoch. A keeper thread (`keeper`) renews the leader lease and
every run's lease and notices cancel requests. It claims only while fewer runs than
`concurrency` hold a live lease in the deployment (its own, and those of
other servers, e.g. a former leader's), and no sooner than `gap_seconds`
after the last run ended (remembered in the leader lease, so that a new
leader keeps the gap too).

Which job is next is `fairshare`'s choice: the best priority, then the
owner whose last start is oldest, then that owner's order. What it reads
stays the same size however long the history grows: each owner's first
candidates through the (queue, owner, rank, ck) index, and a job queued on
this server is offered to it at once (`offer`), without a query; what
other replicas queue, the leader learns of through the wakeups in its lease
(`signals.py`).
Housekeeping (`housekeeping.py`) runs on this thread between claims.

The claim path reads narrow projections of job documents ({owner, rank,
ck}, a claimed job's fields), not `model.records.Job`: a record built per
candidate and per claim would add a conversion on the hottest path for
fields it never reads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from bson import ObjectId
from pymongo.errors import PyMongoError

from genjobs.server.dispatch.coming import ComingJobs
from genjobs.server.dispatch.fairshare import FairShare
from genjobs.server.dispatch.housekeeping import Housekeeping
from genjobs.server.dispatch.keeper import LEADER_LEASE, LeaseKeeper
from genjobs.server.dispatch.providers import ProviderGate
from genjobs.server.dispatch.run import Followed, Run, RunLifecycle, database_error
from genjobs.server.dispatch.runs_here import RunsHere
from genjobs.server.dispatch.signals import WAKEUP_POLL_SECONDS, LeaderSignals
from genjobs.server.generators.base import (
    Generator,
)
from genjobs.server.model import clock
from genjobs.server.model.recheck import RECHECK_SECONDS
from genjobs.server.model.vocabulary import Priority
from genjobs.server.storage.database import Doc
from genjobs.server.storage.queue import READY
from genjobs.server.storage.store import Store
from genjobs.server.telemetry import metrics

log = logging.getLogger(__name__)

EventSink = Callable[[Doc, str], None]


class Dispatcher:
    """Claims and runs jobs; `record(doc, kind)` is told of every change it
    makes (`record_later`, if given, of a run's end whose lane claimed its next
    job with it: it may tell its listeners after the caller goes on)."""

    def __init__(
        self,
        store: Store,
        generator: Generator,
        worker_id: str,
        record: EventSink,
        lease_seconds: float = 10.0,
        poll_seconds: float = 0.5,
        retry_base_seconds: float = 1.0,
        sweep_seconds: float = 60.0,
        sweepers: Sequence[Callable[[], None]] = (),
        tickers: Sequence[Callable[[bool, bool], None]] = (),
        concurrency: int = 1,
        gap_seconds: float = 0.0,
        admit: Callable[[Doc, bool], bool] = lambda job, alone: True,
        release: Callable[[bool], int] = lambda alone: 0,
        unlimited: Callable[[Doc, bool], bool] = lambda job, alone: True,
        gate: ProviderGate | None = None,
        record_later: EventSink | None = None,
    ) -> None:
        self.store = store
        self.queue = store.queue
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency
        self.gap_us = int(gap_seconds * 1_000_000)
        # Budgets (server/services/budgets.py): whether a claimed job may run (False: it
        # was moved to the budget lane), and the release of jobs held there.
        self.admit = admit
        self.release = release
        # Whether no budget limit applies to a job, from memory (`start_as_stored`, a run's end).
        self.unlimited = unlimited
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # A claimed job's run, from the generator's call to its stored outcome.
        self._lifecycle = RunLifecycle(
            store,
            generator,
            record,
            retry_base_seconds,
            self._stopping,
            gate,
            follow=self._end_and_follow,
            lease_seconds=lease_seconds,
            record_later=record_later,
            requeued=lambda doc: self.offer_ready(doc, doc),
        )
        # Claims are made by this thread and by lanes whose run ends (`_end_and_follow`).
        self._claiming = threading.Lock()
        # Providers' outages and rate limits (issue #31): which claims may start now.
        self.gate = gate
        # The claim order. Claims resuming after a pause of half a lease may
        # follow a spell as follower: it rebuilds from the database then.
        self._fair = FairShare(
            store.queue,
            store.outage,
            poll_seconds,
            sweep_seconds,
            lease_seconds / 2,
            recheck_seconds=max(poll_seconds, RECHECK_SECONDS),
        )
        # The runs going on here, and the lanes held for jobs being stored running.
        self._here = RunsHere()
        # Jobs being stored queued that would be claimed next: a lane ending meanwhile waits for them.
        self._coming = ComingJobs()
        self._lanes_ended = False  # `stop` told the lanes to end: a job stored now is given back
        self._giving_back: list[threading.Thread] = []  # those give-backs, waited for by `stop`
        self._last_end_us = 0  # when the last run ended (wall clock): the gap counts from it
        self._signals = LeaderSignals(store.queue, self._signalled, self._wake.set)
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        # The lanes: one long-lived thread each, handed claimed jobs (None: stop).
        self._handoff: queue.SimpleQueue[tuple[Doc, Run] | None] = queue.SimpleQueue()
        self._lanes = [
            threading.Thread(target=self._lane, name=f"dispatcher-lane-{n}", daemon=True)
            for n in range(concurrency)
        ]
        self._house = Housekeeping(
            store,
            self._lifecycle,
            worker_id,
            may_take_over=lambda doc, now: self._keeper.may_take_over(doc, now),
            runs_here=self._here.holds,
            alone=self.alone,
            started_here=self._here.started,
            ended=self._ended,
            offer=self.offer_ready,
            wake=self.wake,
            release=release,
            tickers=tickers,
            gate=gate,
            sweepers=sweepers,
            sweep_seconds=sweep_seconds,
            gap_us=self.gap_us,
        )
        self._keeper = LeaseKeeper(
            store.queue,
            worker_id,
            lease_seconds,
            self._here.current,
            self._stopping,
            self._on_elected,
            self._signals.heard,
            self._database_error,
            store.outage.note_answer,
        )

    # ---- called from other threads --------------------------------------

    def start(self) -> None:
        """Start the dispatcher and its lease keeper."""
        self._thread.start()
        self._keeper.start()
        for lane in self._lanes:
            lane.start()

    def offer(
        self,
        ck: int,
        oid: ObjectId,
        owner: str = "",
        rank: int = Priority.NORMAL.rank,
        doc: Doc | None = None,
    ) -> None:
        """A job just entered the ready lane on this server (`doc`: as stored):
        consider it without polling."""
        if owner:
            self._fair.offer(owner, rank, ck, oid, doc)
        else:
            self._fair.stale()
        self._coming.offered(oid)
        self._queued()

    def offer_ready(self, fields: Doc, stored: Doc | None = None) -> None:
        """`offer` from a job's candidate fields (`_id`, `ck`, `owner`, `rank`);
        `stored`: its whole document as stored, when the caller holds it."""
        self.offer(fields["ck"], fields["_id"], fields["owner"], Priority.rank_of(fields.get("rank")), stored)

    def start_as_stored(self, doc: Doc) -> Doc | None:
        """A job about to be stored on this server, queued in the ready lane
        (`doc`): when it would be the next claim anyway, the claim its insert
        is to carry (the update `QueueStore.claim` would send), and a lane held
        for it until `stored` or `not_stored` says how the insert went. None:
        store it queued, as usual.

        It would be the next claim when this server leads and no other shares
        the database (every job entering the ready lane is offered here), a
        lane is free (no gap to keep), no job is known ready, and neither a
        budget limit nor its provider holds it back. Then the job starts
        without a claim's command of its own, nor the dispatcher's wakeup.
        Asked on the event loop, it never waits: while the claim lock or the
        provider gate's is held (a claim's command, a mark being stored), the
        job is stored queued. Stored queued because a lane is taken or being
        claimed for, it is expected (`ComingJobs`): a run ending before its
        insert is answered waits for it, to claim it with its outcome."""
        if doc.get("queue") != READY or self._signals.followers or not self._is_leader():
            return None
        if self._stopping.is_set() or self._here.hurried or self._house.needs_recovery:
            return None
        if not self._claiming.acquire(blocking=False):
            self._coming.expect(doc["_id"])  # a claim is on its way: its lane may end before this insert
            return None
        try:
            if self._gap_left() > 0:
                return None
            if self._lanes_taken():
                self._coming.expect(doc["_id"])
                return None
            if not self._fair.none_ready(alone=True) or not self.unlimited(doc, True):
                return None
            if self.gate is not None and not self.gate.hold_now(doc):
                return None
            self._here.hold(doc)
            return self.queue.claim_update(self.worker_id, self.lease_seconds)
        finally:
            self._claiming.release()

    def stored(self, job: Doc) -> None:
        """The job `start_as_stored` claimed is stored (`job`, as inserted): its lane runs it."""
        with self._here.changed:
            ended = self._lanes_ended
            # An insert slower than half a lease: its lease may lapse before
            # the keeper renews it. It is left to housekeeping, which gives a
            # job claimed here and never run back to the queue once it lapses.
            late = job["lease_until_us"] - clock.now_us() < self.lease_seconds * 500_000
            if not (ended or late):
                # Counted among the runs before the held lane goes, and handed
                # over under the lock: before `stop` tells the lanes to end.
                self._handoff.put((job, self._here.register(job)))
            self._here.release(job["_id"])
        if not (ended or late):
            self._fair.started(job["owner"])  # its owner's turn, once it runs (as a claim's)
            return
        self._house.look_for_runs()
        self._wake.set()
        if ended:  # stopping: no lane takes it; back to the queue, its attempt given back
            giving_back = threading.Thread(
                target=self._give_back, args=(job,), name="dispatcher-give-back", daemon=True
            )
            self._giving_back.append(giving_back)
            giving_back.start()

    def not_stored(self, oid: ObjectId) -> None:
        """The job `start_as_stored` claimed was not stored (a repeated
        request, a refusal), or its insert's outcome is unknown (then
        housekeeping gives it back if it was stored): its lane is free again."""
        doc = self._here.release(oid)
        self._house.look_for_runs()  # a job whose insert landed unanswered runs nowhere
        if doc is not None and self.gate is not None:
            self.gate.give_back(doc)  # its request was counted against its provider's rate
        self._wake.set()

    def _give_back(self, job: Doc) -> None:
        try:
            self._lifecycle.give_back(Run(job["_id"], job["epoch"]), job)
        except PyMongoError as exc:
            self._database_error(
                exc,
                f"job {job['_id']}",
                logging.INFO,
                "job %s: recovered once its lease lapses (%s)",
                job["_id"],
                exc,
            )

    def wake(self) -> None:
        """Something changed (resume, retry): look at the queue again now."""
        self._fair.stale()
        self._house.next_due.forget()
        self._queued()

    def waiting(self, at_us: int) -> None:
        """A job entered a waiting lane on this server, due at `at_us` (wall
        clock, µs): the leader promotes it then, with no read before; another
        replica tells the leader (its wakeups) to read the waiting lanes."""
        self._house.next_due.lower(at_us)  # (here, or here once this server leads)
        self._queued()

    def _queued(self) -> None:
        """A job entered the queue here: the leader's loop looks now, or this
        follower's tells the leader."""
        if not self._is_leader():
            self._signals.queued()
        self._wake.set()

    def request_cancel(self, job_id: str) -> bool:
        """Stop the running job if it is `job_id`; True if it was running here."""
        return self._here.cancel(job_id)

    def alone(self) -> bool:
        """Whether no other server shares the database, as the leader last heard
        its lease's wakeups (where every follower notes itself once a tick). A
        server that is not the leader is never alone: the leader is elsewhere."""
        return self._is_leader() and not self._signals.followers

    def running_job_ids(self) -> list[str]:
        """The ids of the jobs running here now."""
        return [str(run.oid) for run in self._here.current()]

    def running_job_id(self) -> str:
        """The id of a job running here now (the one, with concurrency 1), or ""."""
        return next(iter(self.running_job_ids()), "")

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Take no more jobs; let the running ones finish within the grace, else requeue them."""
        deadline = time.monotonic() + grace_seconds
        self._stopping.set()
        self._wake.set()
        self._thread.join(grace_seconds)
        self._here.wait_for_none(deadline)
        self.hurry()
        if self._here.runs:
            self._thread.join(5.0)
        self._here.wait_for_none(time.monotonic() + 5.0)
        with self._here.changed:
            self._lanes_ended = True
        for _ in self._lanes:
            self._handoff.put(None)
        self._keeper.join(2.0)
        # Before the lease goes: a sweep is the leader's (the grace, as when sweeps ran on this thread).
        self._house.finish(max(deadline - time.monotonic(), 5.0))
        for giving_back in list(self._giving_back):
            giving_back.join(2.0)
        try:
            self.queue.release_leader(LEADER_LEASE, self.worker_id)
        except PyMongoError:
            log.warning("could not release the dispatcher lease; it lapses by itself")
        metrics.leader(False)

    def hurry(self) -> None:
        """Shutting down without waiting more: stop the running jobs and requeue them."""
        self._here.hurry()

    def _database_error(self, exc: PyMongoError, what: str, quiet: int, message: str, *args: object) -> None:
        database_error(self.store.outage, exc, what, quiet, message, *args)

    def _is_leader(self) -> bool:
        return self._keeper.is_leader()

    def _signalled(self) -> None:
        """Another replica queued jobs (a new wakeups count): what it queued counts for the next pick."""
        self._house.next_due.forget()  # perhaps to wait
        self._fair.fresh()

    def _on_elected(self) -> None:
        """The keeper took the leader lease: recover the former leader's runs now."""
        self._house.elected()
        self._wake.set()

    # ---- the dispatcher thread ------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._is_leader():
                    if self.gate is not None:
                        self.gate.refresh()  # what queued jobs say here: the leader's marks
                    self._signals.send()  # jobs were queued here: the leader learns of them now
                    self._wake.wait(self.poll_seconds)
                    self._wake.clear()
                    continue
                # Cleared before looking: a run ending or a job offered from
                # now on cuts the wait below short instead of being missed.
                self._wake.clear()
                if self._signals.unsent():  # queued here as a follower: look at everything
                    self._fair.stale()
                    self._house.next_due.forget()
                self._house.run()
                wait = self._claim_wait()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                claimed = self._claim_next()
                if claimed is None:
                    self._wake.wait(WAKEUP_POLL_SECONDS if self._signals.followers else self.poll_seconds)
                    continue
                # To a free lane (claims are made only while fewer than
                # `concurrency` runs are here), so that claiming and the
                # leader's housekeeping go on while it runs.
                self._handoff.put(claimed)
                with self._claiming:
                    self._catch_up()  # while the lane starts it, not before its claim
            except PyMongoError as exc:
                self._database_error(
                    exc, "dispatcher", logging.DEBUG, "dispatcher: database unavailable (%s); retrying", exc
                )
                self._stopping.wait(0.5)
            except Exception:
                log.exception("dispatcher: unexpected error")
                self._stopping.wait(0.5)

    def _claim_wait(self, freeing: int = 0) -> float:
        """Seconds to wait before claiming (0 or less: claim now): while every
        lane of the deployment is taken (`freeing`: of this server's runs, those
        ending now), every provider is down or paused, or until the gap after
        the last end is over."""
        if self._lanes_taken(freeing):
            return self.poll_seconds  # a run ending here wakes the loop sooner
        closed = self.gate.claim_wait() if self.gate is not None else 0.0  # every provider down or paused
        return max(closed, self._gap_left())

    def _lanes_taken(self, freeing: int = 0) -> bool:
        """Whether every lane of the deployment is taken (`freeing`: of this
        server's runs, those ending now), counting lanes held for jobs being stored."""
        return self._here.taken() - freeing + self._house.elsewhere >= self.concurrency

    def _gap_left(self) -> float:
        """Seconds until the gap after the last run's end is over (0 or less: over)."""
        return (self._last_end_us + self.gap_us - clock.now_us()) / 1e6

    def _ended(self, stamp_us: int) -> None:
        """A run ended at `stamp_us`: the next claim keeps the gap after it."""
        with self._here.changed:
            self._last_end_us = max(self._last_end_us, stamp_us)

    def _lane(self) -> None:
        """A lane's thread: runs the jobs handed to it, and those it claimed as
        its last run ended, one after another."""
        while (handed := self._handoff.get()) is not None:
            job, run = handed
            while (following := self._run(job, run)) is not None:
                job, run = following, self._here.run_of(following["_id"])

    def _run(self, job: Doc, run: Run) -> Doc | None:
        """Run a claimed job; the next job this lane claimed as it ended, if any."""
        try:
            self._lifecycle.execute(job, run)
        except PyMongoError as exc:
            self._database_error(
                exc,
                f"job {run.oid}",
                logging.INFO,
                "job %s: database unavailable (%s); recovered once its lease lapses",
                run.oid,
                exc,
            )
        except Exception:
            log.exception("job %s: unexpected error", run.oid)
        finally:
            self._here.ended(run)
            if run.generated:
                self._ended(clock.now_us())
                if self.gap_us:
                    try:
                        self.queue.note_run_end(LEADER_LEASE, self._last_end_us)
                    except PyMongoError as exc:
                        self._database_error(
                            exc,
                            "storing the last run's end",
                            logging.INFO,
                            "could not store when the last run ended (%s)",
                            exc,
                        )
            if run.following is None:
                self._wake.set()  # a lane is free
        return run.following

    def _claim_next(self) -> tuple[Doc, Run] | None:
        """Claim the next ready job in fair-share order (see `fairshare`); None:
        nothing ready. The reads due once a poll interval wait for `_catch_up`
        unless nothing is known: after a run longer than that interval, they
        would otherwise come between its end and the next job's start."""
        with self._claiming:
            if self._signals.followers:
                self._signals.heed()  # what other replicas queued counts for this pick
            caught_up = False
            # A lane's follow-up may have taken the free lane meanwhile.
            while self._claim_wait() <= 0:
                pick = self._fair.next(polls=False, alone=self.alone())
                if pick is None or pick.oid is None:
                    # Once a call: a read slower than its interval would be due again at once.
                    if not caught_up and self._catch_up():
                        caught_up = True
                        continue  # the reads found what to try, perhaps
                    return None
                job = self.queue.claim(pick.oid, self.worker_id, self.lease_seconds)
                if job is not None and self._runnable(job):
                    # Counted among the runs before the lock goes: a job
                    # stored running meanwhile must find its lane taken.
                    return job, self._here.register(job)
            return None

    def _catch_up(self) -> bool:
        """The reads due once a poll interval (the leader lease's wakeups, the turns'
        save, the ready lane's poll: once a recheck for a leader alone), made
        once a claimed job is on its way; whether any was made. Under the claim lock."""
        heeded = self._signals.heed()
        return self._fair.catch_up(self.alone()) or heeded

    def _runnable(self, job: Doc) -> bool:
        """A job just claimed may start: its budget admits it (else it was moved
        to the budget lane) and its provider takes work (else it went back to
        wait, its attempt given back). Here, under the claim lock: a job its
        budget sends back takes no turn, no lane and no gap, and never races
        the budgets' release."""
        if not self.admit(job, self.alone()):
            return False
        wait = self.gate.hold(job) if self.gate is not None else None
        if wait is not None:
            self._lifecycle.wait_for_provider(Run(job["_id"], job["epoch"]), job, wait)
            return False
        self._fair.started(job["owner"])
        return True

    def _end_and_follow(self, run: Run, job: Doc, changes: Doc) -> Followed:
        """A run completed (`job`: as its claim and its progress writes left
        it): store its outcome and claim its lane's next job in one command
        (`end_and_claim`, on that version of the job) when a
        job may start now and its document is at hand (submitted here, or read
        with its owner's head). A run that cost something under a limit is not followed. The
        next job is registered as this lane's run."""
        if self.gap_us or self._here.hurried or self._house.needs_recovery or not self._is_leader():
            return Followed(None)  # (with a gap: it starts at this run's end)
        if int(changes.get("cost_cents") or 0) > 0 and not self.unlimited(job, self.alone()):
            # Under a limit its cost is counted before the lane's next claim, so
            # that the next job's admission reads it (a budget it spent holds that job).
            return Followed(None)
        if self._stopping.is_set():
            return Followed(None)
        # A job being stored here would be next: its claim rides this outcome.
        self._coming.wait(self._fair.knows_ready)
        if self._stopping.is_set() or self._here.hurried:
            return Followed(None)  # (stopping meanwhile)
        with self._claiming:
            self._signals.heed()
            if self._claim_wait(freeing=1) > 0:  # this run's lane is the one freed
                return Followed(None)
            pick = self._fair.next(alone=self.alone())
            if pick is None or pick.doc is None:
                if pick is not None:
                    self._fair.put_back(pick)  # not at hand: the dispatcher thread claims it
                return Followed(None)
            try:
                ended, claimed = self.queue.end_and_claim(
                    job, changes, pick.doc, self.worker_id, self.lease_seconds
                )
            except PyMongoError as exc:
                self._fair.put_back(pick)
                self._database_error(
                    exc, f"job {run.oid}", logging.INFO, "job %s: outcome unsure (%s)", run.oid, exc
                )
                return Followed(None, unsure=True)
            if claimed is None:
                self._fair.put_back(pick)  # changed since it was read: claimed the usual way, if still ready
                return Followed(ended)
            if not self._runnable(claimed):
                return Followed(ended)
            self._here.register(claimed)
            run.following = claimed  # run next by this lane, whatever happens to the rest of this run
            return Followed(ended)
