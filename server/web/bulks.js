// Bulk jobs: the list with X of Y and the notifications, and one bulk job with
// its counts, items in order, and Pause / Resume / Cancel; live from its stream.

import { api, follow } from "./api.js";
import {
  ago, badge, bulkStatus, button, confirmDialog, emptyState, h, jobStatus, jobTitle, keptUntil, livePageHead,
  modeName, placeRows, progressBar, replace, time, toast, when,
} from "./ui.js";

const BULK_FINAL = new Set(["completed", "cancelled"]);

// The counts are the server's (BulkJob: done = completed + failed + cancelled +
// deleted); the headline is what completed, as `genjobs bulk ls` shows it.
function ofText(bulk) {
  return `${bulk.completedItems || 0} of ${bulk.totalItems || 0}`;
}

/** A bulk job's item jobs (retries included, articles left out): id -> job. */
async function itemJobs(id) {
  const page = await api("GET", "/v1/jobs", { query: { bulkJobId: id, pageSize: 100, view: "JOB_VIEW_BASIC" } });
  return new Map((page.jobs || []).map((job) => [job.id, job]));
}

/** What a bulk job is called: its project, else its first item's topic. */
function bulkName(bulk, jobs) {
  if (bulk.project) return bulk.project;
  const first = [...jobs.values()].sort((a, b) => (a.queuePosition || 0) - (b.queuePosition || 0))[0];
  return first ? `${jobTitle(first)}${bulk.totalItems > 1 ? ` + ${bulk.totalItems - 1} more` : ""}` : `${bulk.totalItems} items`;
}

export function bulkListPage(main) {
  let left = false;
  const tbody = h("tbody");
  const notes = h("ul", { class: "notes" });
  replace(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Bulk jobs")),
    h("div", { class: "grid-main" },
      h("section", { class: "card table-card", "aria-label": "Bulk jobs" },
        h("div", { class: "table-wrap" },
          h("table", { class: "jobs", id: "bulk-table" },
            h("thead", {}, h("tr", {}, ["Bulk job", "Mode", "Status", "Completed", "Created"].map((t) => h("th", { scope: "col" }, t)))),
            tbody))),
      h("section", { class: "card", "aria-labelledby": "notes-title" }, h("h2", { id: "notes-title" }, "Notifications"), notes)),
  );

  Promise.all([api("GET", "/v1/bulkJobs", { query: { pageSize: 50 } }), api("GET", "/v1/notifications", { query: { pageSize: 20 } })])
    .then(([list, notifications]) => {
      if (left) return;
      const bulks = list.bulkJobs || [];
      replace(tbody, bulks.length ? bulks.map((b) => {
        const bar = progressBar(b.percentage || 0, `Progress of bulk job ${b.id}`);
        bar.update(b.percentage || 0, bulkStatus(b));
        return h("tr", { dataset: { bulkJobId: b.id, status: bulkStatus(b) } },
          h("td", { class: "title", "data-label": "Bulk job" }, h("a", { href: `/bulk-jobs/${b.id}` }, bulkName(b, new Map())),
            h("div", { class: "sub" }, `${b.totalItems} items · ${b.id.slice(-8)}`)),
          h("td", { "data-label": "Mode" }, modeName(b.mode)),
          h("td", { "data-label": "Status" }, badge(bulkStatus(b))),
          h("td", { class: "progress", "data-label": "Completed" }, bar, h("span", { class: "pct" }, ofText(b) + (b.deletedItems ? ` · ${b.deletedItems} deleted` : ""))),
          h("td", { "data-label": "Created" }, ago(b.createTime)));
      }) : h("tr", {}, h("td", { colspan: 5 }, emptyState("No bulk jobs yet. Create one with genjobs bulk or POST /v1/bulkJobs."))));
      renderNotes(notes, notifications.notifications || []);
      // Without a project a bulk job is called by its first topic: read after the table shows.
      for (const b of bulks.filter((one) => !one.project)) {
        itemJobs(b.id).then((jobs) => {
          const link = !left && tbody.querySelector(`tr[data-bulk-job-id="${b.id}"] a`);
          if (link) link.textContent = bulkName(b, jobs);
        }).catch(() => {});
      }
    })
    .catch((error) => toast(error.message, "bad"));
  return () => { left = true; };
}

function renderNotes(list, notifications) {
  replace(list, notifications.length ? notifications.map((n) =>
    h("li", {},
      h("a", { href: `/bulk-jobs/${n.bulkJobId}` }, n.message || "Bulk job finished"),
      h("div", { class: "sub" }, `${ago(n.createTime)}${n.delivered ? " · delivered" : ""}`)))
    : h("li", { class: "muted" }, "Nothing yet."));
}

export function bulkPage(main, id) {
  let left = false;
  let stream = null;
  const head = h("div", { class: "page-head" });
  // The head's parts and the items' rows stay the same elements as the bulk
  // job updates (an event per item change): see livePageHead and placeRows.
  const pageHead = livePageHead(head);
  const fillActions = keptUntil(pageHead.actions);
  const itemRows = new Map(); // item job id -> {tr, update}
  const bar = progressBar(0, "Bulk job progress");
  const counts = h("div", { class: "counts" });
  const tbody = h("tbody");
  const summary = h("section", { class: "card", "aria-labelledby": "summary-title" });
  const notes = h("ul", { class: "notes" });

  replace(
    main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "/bulk-jobs" }, "Bulk jobs"), " / ",
      h("span", {}, id.slice(-8))),
    head,
    h("section", { class: "card progress-card", "aria-label": "Progress" }, counts, bar),
    h("div", { class: "grid-main" },
      h("section", { class: "card table-card", "aria-label": "Items" },
        h("div", { class: "table-wrap" },
          h("table", { class: "jobs compact", id: "items-table" },
            h("thead", {}, h("tr", {}, ["#", "Job", "Status", "Error"].map((t) => h("th", { scope: "col" }, t)))),
            tbody))),
      h("div", {}, summary, h("section", { class: "card", "aria-labelledby": "notes-title" },
        h("h2", { id: "notes-title" }, "Notifications"), notes))),
  );

  let shown = null;
  let jobs = new Map(); // item job id -> job (its topic)

  function render(bulk) {
    shown = bulk;
    const status = bulkStatus(bulk);
    const line = [bulk.project && `project ${bulk.project}`,
      `${bulk.totalItems || 0} ${modeName(bulk.mode)} items`, `bulk job ${bulk.id}`].filter(Boolean).join(" · ");
    pageHead.show(bulkName(bulk, jobs), line, status, { bulkJobId: bulk.id });
    fillActions(status, () => {
      const buttons = [];
      if (status === "queued" || status === "processing") buttons.push(button("Pause", () => act("pause"), ""));
      if (status === "paused") buttons.push(button("Resume", () => act("resume"), "primary"));
      if (!BULK_FINAL.has(status)) buttons.push(button("Cancel", () => act("cancel"), "warn"));
      return buttons;
    });
    bar.update(bulk.percentage || 0, status);
    const eta = time(bulk.estimatedCompletion);
    replace(
      counts,
      h("div", { class: "of", id: "bulk-of" }, h("strong", {}, ofText(bulk)), " items completed"),
      h("dl", { class: "facts inline" },
        [["Completed", bulk.completedItems || 0], ["Failed", bulk.failedItems || 0],
          ["Cancelled", bulk.cancelledItems || 0], ["Remaining", bulk.remainingItems || 0],
          ...(bulk.deletedItems ? [["Deleted", bulk.deletedItems]] : []),
          // Running: when it should be done; ended: when it was (its end time).
          ["Done at", (BULK_FINAL.has(status) ? when(time(bulk.endTime)) : eta && eta.toLocaleTimeString()) || "—"]]
          .map(([k, v]) => h("div", { dataset: { count: k.toLowerCase() } }, h("dt", {}, k), h("dd", {}, v)))),
    );
    if (bulk.items) {
      placeRows(tbody, bulk.items.map(itemRow));
      const listed = new Set(bulk.items.map((item) => item.id));
      for (const itemId of itemRows.keys()) if (!listed.has(itemId)) itemRows.delete(itemId);
    }
    // Errors by topic: the items that failed, named as the table names them.
    const failed = (bulk.items || []).filter((item) => jobStatus(item) === "failed" && item.error);
    summary.hidden = !failed.length;
    replace(summary, h("h2", { id: "summary-title" }, "Errors"), h("ul", { class: "errors", id: "bulk-errors" }, failed.map((item) =>
      h("li", {}, h("strong", {}, topicOf(item)), `: ${item.error.code}: ${item.error.message}`))));
  }

  // An item's row, made once and updated in place.
  function itemRow(item) {
    let entry = itemRows.get(item.id);
    if (!entry) {
      const position = h("td", { class: "num", "data-label": "#" });
      const link = h("a", { href: `/jobs/${item.id}` });
      const state = h("td", { "data-label": "Status" });
      const error = h("td", { class: "error-cell", "data-label": "Error" });
      const tr = h("tr", { dataset: { jobId: item.id } }, position,
        h("td", { class: "title", "data-label": "Job" }, link, h("div", { class: "sub" }, item.id.slice(-8))),
        state, error);
      const update = (next) => {
        const s = jobStatus(next);
        tr.dataset.status = s;
        position.textContent = next.queuePosition ?? "";
        link.textContent = topicOf(next);
        replace(state, badge(s));
        error.textContent = next.error ? `${next.error.code}: ${next.error.message}` : "";
      };
      entry = { tr, update };
      itemRows.set(item.id, entry);
    }
    entry.update(item);
    return entry.tr;
  }

  // The items' topics, read again when an item is a job not seen yet (a retry).
  let reading = false;
  const asked = new Set(); // ids read again for, once each
  function readTopics() {
    reading = true;
    itemJobs(id).then((found) => {
      jobs = found;
      if (!left && shown) render(shown);
    }).catch(() => {}).finally(() => { reading = false; });
  }

  function topicOf(item) {
    if (!jobs.has(item.id) && jobs.size && !reading && !asked.has(item.id)) {
      asked.add(item.id);
      readTopics();
    }
    const job = jobs.get(item.id);
    return job ? jobTitle(job) : `item ${item.queuePosition}`;
  }

  async function act(verb) {
    if (verb === "cancel" && !(await confirmDialog("Cancel this bulk job?", "Queued items are cancelled and the running one is stopped.", "Cancel bulk job"))) return;
    try {
      const answer = await api("POST", `/v1/bulkJobs/${id}:${verb}`);
      // The stream may have shown a later item change while the call was out:
      // the answer's status is the action's, its counts no newer than what is shown.
      const newer = shown && (shown.doneItems || 0) > (answer.doneItems || 0);
      render(newer ? { ...shown, status: answer.status } : answer);
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  function loadNotes() {
    api("GET", "/v1/notifications", { query: { pageSize: 50 } })
      .then((page) => !left && renderNotes(notes, (page.notifications || []).filter((n) => n.bulkJobId === id)))
      .catch(() => {});
  }

  api("GET", `/v1/bulkJobs/${id}`)
    .then((bulk) => {
      if (left) return;
      render(bulk);
      loadNotes();
      readTopics();
      if (!BULK_FINAL.has(bulkStatus(bulk))) {
        stream = follow(`/v1/bulkJobs/${id}:watch`, (event) => {
          if (left || !event.bulkJob) return;
          render(event.bulkJob);
          if (event.notification) loadNotes();
        }, (event) => event.type === "BULK_JOB_EVENT_TYPE_COMPLETED" || BULK_FINAL.has(bulkStatus(event.bulkJob || {})));
      }
    })
    .catch((error) => replace(head, h("h1", {}, "Bulk job not found"), h("p", { class: "muted" }, error.message)));

  return () => {
    left = true;
    stream?.close();
  };
}
