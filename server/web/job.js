// One job: its stages with the current one marked, percentage, ETA, elapsed
// time, every attempt's error, the article (as text), and the actions; live
// from the job's event stream.

import { liveJobActions } from "./actions.js";
import { api, follow } from "./api.js";
import {
  FINAL, duration, emptyState, h, jobSeconds, jobStatus, jobTitle, livePageHead, modeName, money, navigate,
  olderJob, progressBar, replace, statusName, time, toast, when,
} from "./ui.js";

export function jobPage(main, id) {
  let left = false;
  let stream = null;
  let ticker = null;
  let job = null;

  const head = h("div", { class: "page-head" });
  const pageHead = livePageHead(head);
  const showActions = liveJobActions(pageHead.actions, acted);
  const bar = progressBar(0, "Job progress");
  const pct = h("div", { class: "big-pct" });
  const stages = h("ol", { class: "stages", "aria-label": "Stages" });
  const facts = h("dl", { class: "facts" });
  const errors = h("section", { class: "card", "aria-labelledby": "errors-title" });
  const article = h("section", { class: "card article", "aria-labelledby": "article-title" });
  const params = h("dl", { class: "facts" });

  replace(
    main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "/" }, "Jobs"), " / ",
      h("span", {}, id.slice(-8))),
    head,
    h("div", { class: "grid-2" },
      h("section", { class: "card progress-card", "aria-label": "Progress" }, pct, bar, stages, facts),
      h("section", { class: "card", "aria-labelledby": "params-title" }, h("h2", { id: "params-title" }, "Request"), params)),
    errors,
    article,
  );

  function render(next) {
    if (olderJob(next, job)) return;
    job = next;
    const status = jobStatus(job);
    const progress = job.progress || {};
    const percent = status === "completed" ? 100 : progress.percentage || 0;
    pageHead.show(jobTitle(job), `${modeName(job.mode)} · job ${job.id}`, status, { jobId: job.id });
    showActions(job);
    bar.update(percent, status);
    const due = time(job.scheduleTime);
    const waiting = status === "queued" && due && due > Date.now();
    replace(pct, h("strong", {}, `${percent}%`),
      h("span", { class: "muted", id: "job-state" }, waiting ? `scheduled for ${when(due)}` : progress.message || status));
    renderStages(status, progress.stage || "");
    renderFacts();
    renderParams();
    renderErrors();
    renderArticle();
  }

  // The stages the server's generator declares (job.stages) and how many are
  // finished (job.stagesDone), as the server says; a generator that declares
  // none (http) shows the stage its service reports, alone.
  function renderStages(status, current) {
    const names = [...(job.stages || [])];
    let at = job.stagesDone || 0;
    if (!names.length && current && current !== "done" && current !== "starting") names.push(current);
    if (status === "completed") at = names.length;
    replace(
      stages,
      names.map((name, i) => {
        const state = i < at ? "done" : i === at && status === "processing" ? "current" : "todo";
        return h("li", { class: `stage ${state}`, "aria-current": state === "current" ? "step" : null },
          h("span", { class: "dot", "aria-hidden": "true" }), name);
      }),
    );
  }

  function renderFacts() {
    const status = jobStatus(job);
    const progress = job.progress || {};
    const eta = time(progress.estimatedCompletion);
    const due = time(job.scheduleTime);
    const rows = [
      ...(due ? [["Scheduled for", when(due)]] : []),
      ["Priority", statusName(job.priority, "PRIORITY_") || "normal"],
      ["Elapsed", duration(jobSeconds(job)) || (due && due > Date.now() ? "not due yet" : "not started")],
      ["Time left", status === "processing" && eta ? duration(Math.max(0, (eta - Date.now()) / 1000)) : "—"],
      ["Attempt", `${job.attempt || 0} of ${job.maxAttempts || 0}`],
      ["Created", when(time(job.createTime))],
      ["Finished", when(time(job.endTime)) || "—"],
    ];
    replace(facts, rows.map(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k.toLowerCase() } }, v)]));
  }

  function renderParams() {
    const p = job.params || {};
    const rows = [
      ["Topic", p.topic],
      ["Keywords", (p.keywords || []).join(", ")],
      ["Words", p.wordCount],
      ["Tone", p.tone],
      ["Source text", p.sourceText && `${p.sourceText.slice(0, 200)}${p.sourceText.length > 200 ? "…" : ""}`],
      ["Extra", Object.entries(p.extra || {}).map(([k, v]) => `${k}=${v}`).join(", ")],
      ["Project", job.project],
      ["Template", job.template && h("a", { href: `/templates/${job.template}` }, job.template)],
      ["Schedule", job.scheduleId && h("a", { href: `/schedules/${job.scheduleId}` }, job.scheduleId)],
      ["Retry of", job.retryOf && h("a", { href: `/jobs/${job.retryOf}` }, job.retryOf)],
      ["Bulk job", job.bulkJobId && h("a", { href: `/bulk-jobs/${job.bulkJobId}` }, job.bulkJobId)],
    ].filter(([, v]) => v);
    replace(params, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function renderErrors() {
    const list = job.attemptErrors || (job.error ? [job.error] : []);
    errors.hidden = !list.length;
    replace(
      errors,
      h("h2", { id: "errors-title" }, "Attempts that failed"),
      h("ol", { class: "errors" }, list.map((e) =>
        h("li", {},
          h("strong", {}, `Attempt ${e.attempt || "?"}: ${e.code || "ERROR"}`),
          h("span", { class: "muted" }, ` ${e.category || ""}${e.retryable ? " · retryable" : ""}`),
          h("div", {}, e.message || "")))),
    );
  }

  function renderArticle() {
    const result = job.result;
    if (!result || !result.content) {
      replace(article, h("h2", { id: "article-title" }, "Article"),
        emptyState(FINAL.has(jobStatus(job)) ? "No article was written." : "The article appears here when the job completes."));
      return;
    }
    replace(
      article,
      h("div", { class: "article-head" },
        h("h2", { id: "article-title" }, result.title || "Article"),
        h("span", { class: "muted" }, `${result.wordCount || 0} words · ${result.costUnknown ? "cost unknown" : money(result.costCents)}`)),
      // textContent only: the generator's text is never markup here.
      h("div", { class: "article-body" }, result.content),
    );
  }

  function acted(kind, answer) {
    if (kind === "retry") {
      toast("Queued a retry.", "good");
      navigate(`/jobs/${answer.id}`);
    } else if (kind === "delete") {
      toast("Deleted.");
      navigate("/");
    } else {
      render(answer);
    }
  }

  function watch() {
    stream = follow(`/v1/jobs/${id}:watch`, (event) => {
      if (!left && event.job) render(event.job);
    }, (event) => FINAL.has(jobStatus(event.job || {})));
  }

  api("GET", `/v1/jobs/${id}`)
    .then((found) => {
      if (left) return;
      render(found);
      if (!FINAL.has(jobStatus(found))) watch();
      // The clock on screen moves between events (no requests: local time only).
      ticker = setInterval(() => job && jobStatus(job) === "processing" && renderFacts(), 1000);
    })
    .catch((error) => replace(head, h("h1", {}, "Job not found"), h("p", { class: "muted" }, error.message)));

  return () => {
    left = true;
    stream?.close();
    clearInterval(ticker);
  };
}
