// Schedules: the list with each one's next run in the viewer's time zone, and
// one schedule with its runs (the jobs its ticks made) and Pause / Resume / Delete.

import { api } from "./api.js";
import {
  ago, badge, button, confirmDialog, emptyState, h, jobStatus, jobTitle, navigate, replace, statusName, time,
  toast, when,
} from "./ui.js";

const state = (schedule) => statusName(schedule.state, "SCHEDULE_STATE_") || "active";

/** What a schedule makes: a template's name, a job's topic, or a bulk job's first. */
function target(schedule) {
  if (schedule.template) return `template ${schedule.template}`;
  if (schedule.job) return jobTitle(schedule.job);
  if (schedule.bulkJob) {
    const items = schedule.bulkJob.items || [];
    return `${schedule.bulkJob.project || jobTitle({ params: items[0] || {} })} (${items.length} items)`;
  }
  return schedule.id;
}

function nextRun(schedule) {
  if (state(schedule) === "paused") return "paused";
  return when(time(schedule.nextRunTime)) || "—";
}

export function schedulesPage(main) {
  let left = false;
  const tbody = h("tbody");
  replace(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Schedules"),
      h("p", { class: "muted" }, "Times in your zone. Create one with ", h("code", {}, "genjobs schedule create"), ".")),
    h("section", { class: "card table-card", "aria-label": "Schedules" },
      h("div", { class: "table-wrap" },
        h("table", { class: "jobs", id: "schedules-table" },
          h("thead", {}, h("tr", {}, ["Schedule", "Cron", "State", "Next run", "Runs"].map((t) => h("th", { scope: "col" }, t)))),
          tbody))),
  );
  api("GET", "/v1/schedules", { query: { pageSize: 100 } })
    .then((page) => {
      if (left) return;
      const list = page.schedules || [];
      replace(tbody, list.length ? list.map((s) => h("tr", { dataset: { scheduleId: s.id, state: state(s) } },
        h("td", { class: "title", "data-label": "Schedule" }, h("a", { href: `/schedules/${s.id}` }, target(s)),
          h("div", { class: "sub" }, s.id.slice(-8))),
        h("td", { "data-label": "Cron" }, h("code", {}, s.cron), h("div", { class: "sub" }, s.timeZone || "UTC")),
        h("td", { "data-label": "State" }, badge(state(s))),
        h("td", { "data-label": "Next run", class: "next-run" }, nextRun(s)),
        h("td", { class: "num", "data-label": "Runs" }, Number(s.runCount || 0))))
        : h("tr", {}, h("td", { colspan: 5 }, emptyState("No schedules yet."))));
    })
    .catch((error) => toast(error.message, "bad"));
  return () => { left = true; };
}

export function schedulePage(main, id) {
  let left = false;
  const head = h("div", { class: "page-head" });
  const facts = h("dl", { class: "facts" });
  const runs = h("tbody");
  replace(
    main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "/schedules" }, "Schedules"), " / ",
      h("span", {}, id.slice(-8))),
    head,
    h("section", { class: "card", "aria-label": "Schedule" }, facts),
    h("section", { class: "card table-card", "aria-labelledby": "runs-title" },
      h("h2", { id: "runs-title" }, "Runs"),
      h("div", { class: "table-wrap" },
        h("table", { class: "jobs", id: "runs-table" },
          h("thead", {}, h("tr", {}, ["Job", "Status", "Created"].map((t) => h("th", { scope: "col" }, t)))), runs))),
  );

  function render(s) {
    const buttons = [
      state(s) === "paused" ? button("Resume", () => act("resume"), "primary") : button("Pause", () => act("pause"), ""),
      button("Delete", remove, "danger"),
    ];
    replace(head, h("div", {}, h("h1", {}, target(s)), h("p", { class: "muted" }, `schedule ${s.id}`)),
      h("div", { class: "head-side", dataset: { scheduleId: s.id, state: state(s) } }, badge(state(s)),
        h("div", { class: "actions" }, buttons)));
    const rows = [
      ["Cron", h("code", {}, s.cron)],
      ["Its zone", s.timeZone || "UTC"],
      ["Next run", nextRun(s)],
      ["Last run", when(time(s.lastRunTime)) || "never"],
      ["Runs", Number(s.runCount || 0)],
      ["Last error", s.lastError || "—"],
    ];
    replace(facts, rows.map(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k.toLowerCase() } }, v)]));
  }

  async function act(verb) {
    try {
      render(await api("POST", `/v1/schedules/${id}:${verb}`));
      toast(verb === "pause" ? "Paused." : "Resumed.", "good");
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  async function remove() {
    if (!(await confirmDialog("Delete this schedule?", "It makes no more runs; the jobs it made are kept.", "Delete"))) return;
    try {
      await api("DELETE", `/v1/schedules/${id}`);
      toast("Deleted the schedule.");
      navigate("/schedules");
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  api("GET", `/v1/schedules/${id}`)
    .then((s) => {
      if (left) return;
      render(s);
      return api("GET", "/v1/jobs", { query: { scheduleId: id, pageSize: 50, view: "JOB_VIEW_BASIC" } });
    })
    .then((page) => {
      if (left || !page) return;
      const jobs = page.jobs || [];
      replace(runs, jobs.length ? jobs.map((job) => h("tr", { dataset: { jobId: job.id, status: jobStatus(job) } },
        h("td", { class: "title", "data-label": "Job" }, h("a", { href: `/jobs/${job.id}` }, jobTitle(job))),
        h("td", { "data-label": "Status" }, badge(jobStatus(job))),
        h("td", { "data-label": "Created" }, ago(job.createTime))))
        : h("tr", {}, h("td", { colspan: 3 }, emptyState("No runs yet."))));
    })
    .catch((error) => replace(head, h("h1", {}, "Schedule not found"), h("p", { class: "muted" }, error.message)));
  return () => { left = true; };
}
