"""What runs on this server now: the runs of its lanes, and the lanes held
for jobs being stored running (`Dispatcher.start_as_stored`), under one
condition that is notified when either ends. The dispatcher counts them
against its lanes; housekeeping asks whether a processing job is one of
them; shutdown waits for them and stops them."""

from __future__ import annotations

import threading
import time
from collections import deque

from bson import ObjectId

from genjobs.server.dispatch.run import Run
from genjobs.server.storage.database import Doc

RECENT_RUNS = 256  # runs remembered, to tell a claim whose answer was lost from a run


class RunsHere:
    """The runs going on here, and the lanes held for jobs being stored; from any thread."""

    def __init__(self) -> None:
        self.runs: dict[ObjectId, Run] = {}
        self.held: dict[ObjectId, Doc] = {}  # job being stored claimed -> its document
        self.changed = threading.Condition()  # guards both; notified when one ends
        self.hurried = False  # shutting down: a run registered from now on is stopped at once
        self.started: deque[tuple[ObjectId, int]] = deque(maxlen=RECENT_RUNS)  # (job, epoch) run here

    def register(self, job: Doc) -> Run:
        """A claimed job's run, counted among the runs here from now on."""
        run = Run(job["_id"], job["epoch"])
        with self.changed:
            self.runs[run.oid] = run
            if self.hurried:
                run.stopping = True
                run.cancel.set()
        self.started.append((run.oid, run.epoch))
        return run

    def hold(self, doc: Doc) -> None:
        """A lane is held for `doc`, a job being stored running here."""
        with self.changed:
            self.held[doc["_id"]] = doc

    def release(self, oid: ObjectId) -> Doc | None:
        """The lane held for `oid` is free again (stored and registered, or not
        stored): its document, if one was held."""
        with self.changed:
            doc = self.held.pop(oid, None)
            self.changed.notify_all()
        return doc

    def run_of(self, oid: ObjectId) -> Run:
        """The run registered here for the job `oid`."""
        with self.changed:
            return self.runs[oid]

    def ended(self, run: Run) -> None:
        """`run` is over: its lane is free."""
        with self.changed:
            del self.runs[run.oid]
            self.changed.notify_all()

    def taken(self) -> int:
        """How many lanes the runs and the held jobs take here."""
        with self.changed:  # a job stored running moves from held to run under it
            return len(self.runs) + len(self.held)

    def holds(self, doc: Doc) -> bool:
        """Whether a processing job is a run here, or being stored running here."""
        here = self.runs.get(doc["_id"])
        return (here is not None and here.epoch == doc["epoch"]) or doc["_id"] in self.held

    def current(self) -> list[Run]:
        """The runs going on now."""
        with self.changed:
            return list(self.runs.values())

    def cancel(self, job_id: str) -> bool:
        """Stop the run of `job_id`; whether it runs here."""
        run = next((r for r in self.current() if str(r.oid) == job_id), None)
        if run is not None:
            run.cancel.set()
        return run is not None

    def wait_for_none(self, deadline: float) -> None:
        """Until no run is left (nor a lane held), or the deadline (monotonic) passed."""
        with self.changed:
            self.changed.wait_for(
                lambda: not self.runs and not self.held, max(0.0, deadline - time.monotonic())
            )

    def hurry(self) -> None:
        """Shutting down without waiting more: stop every run (to be requeued), and those registered later."""
        with self.changed:
            self.hurried = True
            runs = list(self.runs.values())
        for run in runs:
            run.stopping = True
            run.cancel.set()
