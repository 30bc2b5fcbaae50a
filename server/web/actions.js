// The actions on one job, where its status allows each (as the server's rules do).

import { api } from "./api.js";
import { button, confirmDialog, jobStatus, keptUntil, toast } from "./ui.js";

const ALLOWED = {
  cancel: new Set(["queued", "processing"]),
  retry: new Set(["failed", "cancelled"]),
  delete: new Set(["completed", "failed", "cancelled"]),
};

/**
 * Buttons for `job`. `done(kind, answer)` runs after an action succeeds:
 * kind is "cancel" (answer: the job), "retry" (the new job) or "delete".
 */
export function jobActions(job, done) {
  const status = jobStatus(job);
  const act = (kind, call) => async (event) => {
    const target = event.currentTarget;
    target.disabled = true;
    try {
      done(kind, await call());
    } catch (error) {
      toast(error.message, "bad");
      target.disabled = false;
    }
  };
  const buttons = [];
  if (ALLOWED.cancel.has(status)) {
    buttons.push(button("Cancel", act("cancel", () => api("POST", `/v1/jobs/${job.id}:cancel`)), "warn"));
  }
  if (ALLOWED.retry.has(status)) {
    buttons.push(button("Retry", act("retry", () => api("POST", `/v1/jobs/${job.id}:retry`)), ""));
  }
  if (ALLOWED.delete.has(status)) {
    buttons.push(
      button(
        "Delete",
        act("delete", async () => {
          if (!(await confirmDialog("Delete this job?", "The job and its history are removed for good.", "Delete"))) {
            throw new Error("Kept the job.");
          }
          return api("DELETE", `/v1/jobs/${job.id}`);
        }),
        "danger",
      ),
    );
  }
  return buttons;
}

/**
 * Keeps `holder` showing the buttons of the job it is given. They are built
 * again only when the job's status changes: a progress update leaves the same
 * elements, so a click or the keyboard's focus on one survives it.
 * `done(kind, answer, job)` gets the newest job given.
 */
export function liveJobActions(holder, done) {
  const fill = keptUntil(holder);
  let newest = null;
  return (job) => {
    newest = job;
    fill(`${job.id} ${jobStatus(job)}`, () => jobActions(job, (kind, answer) => done(kind, answer, newest)));
  };
}
