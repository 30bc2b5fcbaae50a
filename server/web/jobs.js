// Overview: status cards with the total cost, a new-job form, the filtered jobs
// table (newest first, 50 a page) kept live by the owner's one event stream
// (WatchJobs), and the bulk operations behind a confirmation that shows the
// dry-run count.

import { liveJobActions } from "./actions.js";
import { api, follow } from "./api.js";
import {
  ago, badge, button, confirmDialog, duration, emptyState, h, jobSeconds, jobStatus, jobTitle,
  modeName, money, olderJob, placeRows, progressBar, replace, statusName, time, toast, when,
} from "./ui.js";

const STATUSES = ["queued", "processing", "completed", "failed", "cancelled"];
const MODES = ["topic", "keywords", "trends", "spin"];
const PAGE_SIZE = 50;
// Stats read the owner's whole history: at most one read per this many ms,
// however many rows change status (the last change is always read).
const STATS_EVERY_MS = 1000;
// A new job, or one whose status changed, reads the page again: at most once
// per this many ms, however many change at once.
const RELOAD_AFTER_MS = 300;
// The new-job form asks for an estimate once typing pauses this long.
const ESTIMATE_AFTER_MS = 400;
const TOTAL_CAP = 1000;
const BULK_OPERATIONS = [
  { op: "BULK_OPERATION_RETRY_ALL_FAILED", label: "Retry all failed", verb: "retry", noun: "failed" },
  { op: "BULK_OPERATION_CANCEL_ALL_QUEUED", label: "Cancel all queued", verb: "cancel", noun: "queued" },
  { op: "BULK_OPERATION_DELETE_ALL_COMPLETED", label: "Delete all completed", verb: "delete", noun: "completed" },
];

export function jobsPage(main) {
  const state = {
    filters: { status: "", mode: "", query: "", from: "", to: "", archived: false }, tokens: [""], page: 0,
  };
  const rows = new Map(); // job id -> {job, tr, update}
  let left = false;
  let reloadTimer;
  let statsTimer;
  let statsAt = 0;

  const cards = h("section", { class: "cards", "aria-label": "Jobs by status" });
  const tbody = h("tbody");
  const newer = button("Newer", () => { state.page -= 1; reload(); }, "ghost small");
  const older = button("Older", () => { state.page += 1; reload(); }, "ghost small");
  newer.disabled = older.disabled = true; // until the first page is read
  const pager = h("div", { class: "pager" }, newer, older);
  const summary = h("p", { class: "muted", id: "jobs-summary", "aria-live": "polite" });

  // New job ------------------------------------------------------------
  const modeSelect = h("select", { id: "new-mode", name: "mode" }, MODES.map((m) => h("option", { value: m }, m)));
  const topicInput = h("input", { id: "new-topic", name: "topic", placeholder: "What should it write about?", required: true });
  const wordsInput = h("input", { id: "new-words", name: "words", type: "number", min: 50, max: 5000, value: 400 });
  const extraInput = h("input", { id: "new-extra", name: "extra", placeholder: "key=value, key=value" });
  const estimateOut = h("output", { id: "new-estimate", class: "estimate", "aria-live": "polite" });
  const submitForm = h(
    "form",
    { class: "card new-job", onsubmit: submit, "aria-labelledby": "new-job-title" },
    h("h2", { id: "new-job-title" }, "New job"),
    h(
      "div",
      { class: "form-row" },
      field("Mode", modeSelect),
      field("Topic or keywords", topicInput, "grow"),
      field("Words", wordsInput, "narrow"),
      h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Submit"), estimateOut),
    ),
    h("details", {}, h("summary", {}, "More options"), field("Extra parameters", extraInput, "grow")),
  );

  // The SubmitJob request the form holds (the estimate asks with the same one).
  function newJob() {
    const mode = modeSelect.value;
    const text = topicInput.value.trim();
    const extra = Object.fromEntries(
      extraInput.value.split(",").map((p) => p.split("=").map((s) => s.trim())).filter(([k, v]) => k && v),
    );
    const params = { wordCount: Number(wordsInput.value) || 0, extra };
    if (mode === "keywords") params.keywords = text.split(",").map((k) => k.trim()).filter(Boolean);
    else if (mode === "spin") params.sourceText = text;
    else params.topic = text;
    return { mode: `MODE_${mode.toUpperCase()}`, params };
  }

  async function submit(event) {
    event.preventDefault();
    try {
      const job = await api("POST", "/v1/jobs", { body: newJob() });
      toast(`Queued “${jobTitle(job)}”.`, "good");
      topicInput.value = "";
      estimateSoon(); // the form is empty: an estimate still due or unanswered is dropped
      await reload();
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  // The estimate before submitting: the same request with validateOnly (nothing
  // is stored), asked once typing pauses; an answer to an older form is dropped.
  let estimateTimer;
  let estimateSeq = 0;
  function showEstimate(text, bad = false) {
    estimateOut.textContent = text || "";
    estimateOut.classList.toggle("error-text", bad);
  }
  function estimateSoon() {
    clearTimeout(estimateTimer);
    const seq = ++estimateSeq;
    if (!topicInput.value.trim()) return showEstimate(null);
    estimateTimer = setTimeout(async () => {
      try {
        const job = await api("POST", "/v1/jobs", { body: { ...newJob(), validateOnly: true } });
        if (seq === estimateSeq && !left) showEstimate(estimateText(job.estimate || {}));
      } catch (error) {
        if (seq === estimateSeq && !left) showEstimate(error.message, true);
      }
    }, ESTIMATE_AFTER_MS);
  }
  for (const input of [modeSelect, topicInput, wordsInput, extraInput]) input.addEventListener("input", estimateSoon);

  // Filters and bulk operations ------------------------------------------
  const statusFilter = h("select", { id: "f-status" }, h("option", { value: "" }, "All statuses"),
    STATUSES.map((s) => h("option", { value: s }, s)));
  const modeFilter = h("select", { id: "f-mode" }, h("option", { value: "" }, "All modes"),
    MODES.map((m) => h("option", { value: m }, m)));
  const queryFilter = h("input", { id: "f-query", type: "search", placeholder: "Search topic or keywords" });
  const fromFilter = h("input", { id: "f-from", type: "date" });
  const toFilter = h("input", { id: "f-to", type: "date" });
  // Jobs the archive holds (GENJOBS_RETENTION_MODE=archive) are left out unless asked for.
  const archivedFilter = h("input", { id: "f-archived", type: "checkbox" });
  let typing;
  const refilter = () => {
    state.filters = {
      status: statusFilter.value, mode: modeFilter.value, query: queryFilter.value.trim(),
      from: fromFilter.value, to: toFilter.value, archived: archivedFilter.checked,
    };
    state.tokens = [""];
    state.page = 0;
    reload();
  };
  for (const input of [statusFilter, modeFilter, fromFilter, toFilter, archivedFilter]) {
    input.addEventListener("change", refilter);
  }
  queryFilter.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(refilter, 250);
  });
  const filters = h(
    "div",
    { class: "filters", role: "search" },
    field("Status", statusFilter), field("Mode", modeFilter), field("Search", queryFilter, "grow"),
    field("From", fromFilter), field("To", toFilter), field("Include archived", archivedFilter, "check"),
  );
  const operations = h("div", { class: "operations", role: "group", "aria-labelledby": "ops-label" },
    h("span", { class: "operations-label", id: "ops-label" }, "Across all your jobs:"),
    BULK_OPERATIONS.map((o) => button(o.label, () => runOperation(o), "ghost small")));

  async function runOperation(o) {
    try {
      const dry = await api("POST", "/v1/jobs:runBulkOperation", { body: { operation: o.op, validateOnly: true } });
      const count = dry.affectedCount || 0;
      if (!count) {
        toast(`No ${o.noun} jobs to ${o.verb}.`);
        return;
      }
      // affectedCount is every match; remainingCount what this one call leaves.
      const more = Number(dry.remainingCount || 0);
      const now = count - more;
      const after = more ? ` (${more} more after these; run it again for them)` : "";
      const ok = await confirmDialog(`${o.label}?`, `This will ${o.verb} ${now} ${o.noun} job${now === 1 ? "" : "s"}${after}.`,
        `${o.verb[0].toUpperCase()}${o.verb.slice(1)} ${now}`);
      if (!ok) return;
      const done = await api("POST", "/v1/jobs:runBulkOperation", { body: { operation: o.op } });
      toast(`${o.verb[0].toUpperCase()}${o.verb.slice(1)}: ${done.affectedCount || 0} job(s).`, "good");
      await reload();
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  // Table ------------------------------------------------------------------
  const table = h(
    "table",
    { class: "jobs", id: "jobs-table" },
    h("caption", { class: "visually-hidden" }, "Your jobs, newest first"),
    h("thead", {}, h("tr", {}, ["Job", "Mode", "Status", "Progress", "Created", "Duration", ""].map((t) =>
      h("th", { scope: "col" }, t)))),
    tbody,
  );

  replace(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), summary),
    cards,
    submitForm,
    h("section", { class: "card table-card", "aria-label": "Jobs" },
      // Folded on a phone, so that the first screen shows jobs.
      h("details", { class: "toolbar fold", open: !matchMedia("(max-width: 760px)").matches },
        h("summary", {}, "Filters and bulk actions"), h("div", { class: "toolbar-body" }, filters, operations)),
      h("div", { class: "table-wrap" }, table),
      pager),
  );

  function query() {
    const f = state.filters;
    const q = { pageSize: PAGE_SIZE, pageToken: state.tokens[state.page] };
    if (f.status) q.statuses = `JOB_STATUS_${f.status.toUpperCase()}`;
    if (f.mode) q.modes = `MODE_${f.mode.toUpperCase()}`;
    if (f.query) q.query = f.query;
    if (f.from) q.createdAfter = new Date(`${f.from}T00:00:00`).toISOString();
    if (f.to) q.createdBefore = new Date(`${f.to}T23:59:59.999`).toISOString();
    if (f.archived) q.showArchived = true;
    return q;
  }

  // loadStats, throttled: now when the last read is old enough, else once at its turn.
  function refreshStats() {
    if (statsTimer) return;
    const wait = Math.max(0, statsAt + STATS_EVERY_MS - Date.now());
    statsTimer = setTimeout(() => {
      statsTimer = undefined;
      loadStats().catch((error) => toast(error.message, "bad"));
    }, wait);
  }

  async function loadStats() {
    statsAt = Date.now();
    const stats = await api("GET", "/v1/jobs:stats");
    const counts = Object.fromEntries((stats.byStatus || []).map((s) => [jobStatus(s), Number(s.count)]));
    replace(
      cards,
      statCard("total", "All jobs", Number(stats.totalJobs || 0)),
      STATUSES.map((s) => statCard(s, s, counts[s] || 0)),
      statCard("cost", "Total cost", money(stats.totalCostCents) +
        (Number(stats.costUnknownJobs || 0) ? ` + ${stats.costUnknownJobs} unknown` : "")),
    );
  }

  function statCard(key, label, value) {
    return h("div", { class: `card stat stat-${key}`, dataset: { stat: key } },
      h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value));
  }

  async function reload() {
    clearTimeout(reloadTimer);
    reloadTimer = undefined;
    try {
      const page = await api("GET", "/v1/jobs", { query: query() });
      if (left) return;
      render(page);
      refreshStats();
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  function render(page) {
    const jobs = page.jobs || [];
    if (jobs.length) showRows(jobs);
    else {
      rows.clear();
      replace(tbody, h("tr", {}, h("td", { colspan: 7 }, emptyState("No jobs match."))));
    }
    const first = state.page * PAGE_SIZE;
    // ListJobs counts to TOTAL_CAP at most: that total means "that many or more".
    const total = Number(page.totalSize || jobs.length);
    const of = total >= TOTAL_CAP ? `${total.toLocaleString()}+` : total;
    replace(summary, jobs.length ? `${first + 1}–${first + jobs.length} of ${of}` : "");
    if (page.nextPageToken) state.tokens[state.page + 1] = page.nextPageToken;
    newer.disabled = state.page === 0;
    older.disabled = !page.nextPageToken;
  }

  // A job's row stays the same element from one read of the page to the
  // next (updated in place, moved only if its place changed; see placeRows).
  function showRows(jobs) {
    const shown = new Map();
    for (const job of jobs) {
      const entry = rows.get(job.id);
      if (entry) entry.update(job);
      else row(job);
      shown.set(job.id, rows.get(job.id));
    }
    rows.clear();
    shown.forEach((entry, id) => rows.set(id, entry));
    placeRows(tbody, [...shown.values()].map((entry) => entry.tr));
  }

  function row(job) {
    const tr = h("tr", { dataset: { jobId: job.id } });
    const bar = progressBar(0, `Progress of ${jobTitle(job)}`);
    const cells = {
      title: h("td", { class: "title", "data-label": "Job" }),
      mode: h("td", { "data-label": "Mode" }),
      status: h("td", { "data-label": "Status" }),
      progress: h("td", { class: "progress", "data-label": "Progress" }, bar, h("span", { class: "pct" })),
      created: h("td", { "data-label": "Created" }),
      duration: h("td", { class: "num", "data-label": "Duration" }),
      actions: h("td", { class: "actions" }),
    };
    tr.append(...Object.values(cells));
    // The link stays the same element as the row updates: a click between its
    // press and release on a link replaced meanwhile would open nothing.
    const link = h("a", {});
    const sub = h("div", { class: "sub" });
    cells.title.append(link, sub);
    const showActions = liveJobActions(cells.actions, acted);
    const entry = { job, tr };
    entry.update = (next) => {
      if (olderJob(next, entry.job)) return;
      entry.job = next;
      const status = jobStatus(next);
      tr.dataset.status = status;
      link.setAttribute("href", `/jobs/${next.id}`);
      link.textContent = jobTitle(next);
      sub.textContent = jobNotes(next).join(" · ");
      replace(cells.mode, modeName(next.mode));
      replace(cells.status, badge(status));
      const pct = status === "completed" ? 100 : (next.progress && next.progress.percentage) || 0;
      bar.update(pct, status);
      cells.progress.lastChild.textContent = `${pct}%`;
      replace(cells.created, h("time", { datetime: next.createTime, title: next.createTime }, ago(next.createTime)));
      replace(cells.duration, duration(jobSeconds(next)));
      showActions(next);
    };
    entry.update(job);
    rows.set(job.id, entry);
    return tr;
  }

  function acted(kind, answer, job) {
    if (kind === "cancel") {
      rows.get(job.id)?.update(answer);
      toast(`Cancelled “${jobTitle(job)}”.`);
      refreshStats();
      return;
    }
    toast(kind === "retry" ? `Retrying “${jobTitle(job)}”.` : `Deleted “${jobTitle(job)}”.`);
    reload();
  }

  // Live updates: one stream of every change of the owner's jobs. Progress
  // moves its row in place; a new job, or a status change, reads the page and
  // the counts again (the filters and the page decide where a job belongs).
  function onEvent(event) {
    if (left || !event.job) return;
    const entry = rows.get(event.job.id);
    const before = entry ? jobStatus(entry.job) : "";
    entry?.update(event.job);
    if (jobStatus(event.job) === before) return;
    refreshStats();
    if (!reloadTimer) reloadTimer = setTimeout(() => { reloadTimer = undefined; reload(); }, RELOAD_AFTER_MS);
  }
  // Each (re)connection reads the page again, as nothing is replayed: what
  // changed between the first read and the stream's start shows too. Opened
  // once the table shows, so that the first read has the server to itself.
  let stream = null;
  reload().finally(() => {
    if (!left) stream = follow("/v1/jobs:watch", onEvent, null, () => {}, () => reload());
  });
  return () => {
    left = true;
    clearTimeout(reloadTimer);
    clearTimeout(estimateTimer);
    clearTimeout(statsTimer);
    stream?.close();
  };
}

// The row's second line: what sets the job apart (project, bulk, priority, a
// time it waits for), then its short id.
function jobNotes(job) {
  const due = time(job.scheduleTime);
  const priority = statusName(job.priority, "PRIORITY_");
  return [
    job.project,
    job.bulkJobId && "bulk item",
    priority && priority !== "normal" && `${priority} priority`,
    due && due > Date.now() && `scheduled for ${when(due)}`,
    job.archiveTime && `archived ${when(time(job.archiveTime))}`,
    job.id.slice(-8),
  ].filter(Boolean);
}

function field(label, input, size = "") {
  return h("label", { class: `field ${size}` }, h("span", {}, label), input);
}

// "estimate 1-3¢, about 40 s (small on main)", or "cost unknown: model X has
// no price": never a 0 that is not one (the CLI's render.estimate_text).
function estimateText(e) {
  const low = Number(e.lowCents || 0);
  const high = Number(e.highCents || 0);
  let text = e.costUnknown ? `cost unknown: ${e.costUnknownReason || "no price"}`
    : `estimate ${low === high ? low : `${low}-${high}`}¢`;
  if (e.expectedDuration) text += `, about ${duration(parseFloat(e.expectedDuration))}`;
  if (e.model) text += e.provider ? ` (${e.model} on ${e.provider})` : ` (${e.model})`;
  return text;
}
