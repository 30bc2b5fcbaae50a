// Small DOM helpers and formatters shared by the pages. Text is always set as
// text (never as HTML), so nothing a job carries can become markup.

/** h("div", {class: "x", onclick}, child, "text") -> an element. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/**
 * Fills `holder` with what `build()` makes, and again only when `key` changes:
 * while a page updates for other reasons the same elements stay, so a click
 * or the keyboard's focus on one of them survives the update.
 */
export function keptUntil(holder) {
  let shown;
  return (key, build) => {
    if (key === shown) return;
    shown = key;
    replace(holder, build());
  };
}

/**
 * A page's head in `head` (`.page-head`): a title, a line under it, and at
 * its side the status badge and the `actions` holder. Its elements stay as
 * the page updates; `show(title, line, status, dataset)` fills them.
 */
export function livePageHead(head) {
  const title = h("h1");
  const line = h("p", { class: "muted" });
  const actions = h("div", { class: "actions" });
  const side = h("div", { class: "head-side" }, badge("unknown"), actions);
  function show(titleText, lineText, status, dataset) {
    if (!head.contains(side)) replace(head, h("div", {}, title, line), side);
    title.textContent = titleText;
    line.textContent = lineText;
    Object.assign(side.dataset, { ...dataset, status });
    side.firstChild.replaceWith(badge(status));
  }
  return { actions, show };
}

/**
 * Makes `tbody`'s rows exactly `rows`, in order, moving none already in its
 * place (a row taken out of the page loses the focus and a click half done).
 */
export function placeRows(tbody, rows) {
  const kept = new Set(rows);
  for (const tr of [...tbody.children]) if (!kept.has(tr)) tr.remove();
  rows.forEach((tr, i) => {
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
}

/** "JOB_STATUS_PROCESSING" -> "processing". */
export const statusName = (value, prefix) => (value || "").replace(prefix, "").toLowerCase();
export const jobStatus = (job) => statusName(job.status, "JOB_STATUS_") || "unknown";
export const bulkStatus = (bulk) => statusName(bulk.status, "BULK_JOB_STATUS_") || "unknown";
export const modeName = (mode) => statusName(mode, "MODE_");
export const FINAL = new Set(["completed", "failed", "cancelled"]);

export function badge(status) {
  return h("span", { class: `badge badge-${status}` }, status);
}

/** A progress bar (role progressbar, aria-valuenow); update() it in place. */
export function progressBar(percent, label = "Progress") {
  const fill = h("span", { class: "fill" });
  const bar = h("div", {
    class: "bar",
    role: "progressbar",
    "aria-label": label,
    "aria-valuemin": 0,
    "aria-valuemax": 100,
  }, fill);
  bar.update = (value, status) => {
    const v = Math.max(0, Math.min(100, Math.round(value || 0)));
    bar.setAttribute("aria-valuenow", v);
    bar.dataset.status = status || "";
    fill.style.width = `${v}%`;
  };
  bar.update(percent);
  return bar;
}

export function button(label, onclick, kind = "") {
  return h("button", { type: "button", class: kind, onclick }, label);
}

export const time = (text) => (text ? new Date(text) : null);

/**
 * Whether `next` is an older state of the job than `shown`: a job never leaves
 * a final status (a retry is a new job), so a cancel's answer arriving after
 * the stream's event of the job having stopped must not put it back to
 * running on the screen. (Not by updateTime: the servers' clocks differ.)
 */
export const olderJob = (next, shown) =>
  Boolean(shown) && FINAL.has(jobStatus(shown)) && !FINAL.has(jobStatus(next));

// The viewer's own zone, named: "7 Dec 2030, 09:00 CET".
const WHEN = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short",
});
/** A moment in the viewer's time zone, with the zone named. */
export const when = (at) => (at ? WHEN.format(at) : "");

export function ago(text) {
  const at = time(text);
  if (!at) return "";
  const seconds = (Date.now() - at.getTime()) / 1000;
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return at.toLocaleDateString();
}

export function duration(seconds) {
  if (seconds == null || Number.isNaN(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Seconds a job has run (to its end, or to now while it runs). */
export function jobSeconds(job) {
  const start = time(job.startTime);
  if (!start) return null;
  const end = time(job.endTime) || (FINAL.has(jobStatus(job)) ? time(job.updateTime) : new Date());
  return (end - start) / 1000;
}

export const money = (cents) => `$${(Number(cents || 0) / 100).toFixed(2)}`;

export function jobTitle(job) {
  const p = job.params || {};
  return p.topic || (p.keywords || []).join(", ") || (p.sourceText || "").slice(0, 60) || job.id;
}

let toastTimer;
export function toast(text, kind = "") {
  const box = document.getElementById("toasts");
  const note = h("div", { class: `toast ${kind}` }, text);
  box.append(note);
  clearTimeout(toastTimer);
  setTimeout(() => note.remove(), 5000);
}

/** Ask before acting; resolves true on Confirm. */
export function confirmDialog(title, text, okLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

export function emptyState(text) {
  return h("div", { class: "empty" }, text);
}

/** Open a dashboard page by its path (`/jobs/<id>`) without reloading. */
export function navigate(path) {
  history.pushState(null, "", path);
  window.dispatchEvent(new PopStateEvent("popstate"));
}
