// Usage and budgets (this month's spend against each limit, a bar per limit),
// and the notifications of jobs and bulk jobs with their deliveries.

import { api } from "./api.js";
import { ago, emptyState, h, money, progressBar, replace, statusName, toast } from "./ui.js";

export function usagePage(main) {
  let left = false;
  const summary = h("section", { class: "cards", "aria-label": "This month" });
  const budgets = h("section", { class: "card", "aria-labelledby": "budgets-title" });
  const projects = h("section", { class: "card", "aria-labelledby": "projects-title" });
  replace(main, h("div", { class: "page-head" }, h("h1", {}, "Usage and budgets")), summary, budgets, projects);
  api("GET", "/v1/usage")
    .then((usage) => {
      if (left) return;
      const unknown = Number(usage.costUnknownJobs || 0);
      const card = (key, label, value) => h("div", { class: `card stat stat-${key}`, dataset: { stat: key } },
        h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value));
      replace(summary,
        card("cost", `Spent in ${usage.month || "this month"}`, money(usage.spentCents) +
          // Jobs on an unpriced model: counted apart, never as $0.00.
          (unknown ? ` + ${unknown} job${unknown === 1 ? "" : "s"} of unknown cost` : "")),
        card("queued", "Queued jobs", `${usage.queuedJobs || 0}${usage.maxQueuedJobs ? ` of ${usage.maxQueuedJobs}` : ""}`));
      const limits = usage.budgets || [];
      replace(budgets, h("h2", { id: "budgets-title" }, "Budgets this month"),
        limits.length ? h("ul", { class: "limits", id: "budgets" }, limits.map((b) => {
          const limit = Number(b.monthlyLimitCents || 0);
          const spent = Number(b.spentCents || 0);
          const bar = progressBar(limit ? (100 * spent) / limit : 0, `Spend against the ${b.project || "overall"} budget`);
          bar.update(limit ? (100 * spent) / limit : 0, b.exhausted ? "failed" : "processing");
          return h("li", { dataset: { project: b.project || "" } },
            h("div", { class: "limit-head" }, h("strong", {}, b.project ? `project ${b.project}` : "All projects"),
              h("span", { class: "limit-figures" }, `${money(spent)} of ${money(limit)}${b.exhausted ? " · reached: new work waits" : ""}`)),
            bar);
        })) : emptyState("No budgets set. An admin sets one with genjobs budget set."));
      const spend = usage.projects || [];
      replace(projects, h("h2", { id: "projects-title" }, "Spend by project"),
        spend.length ? h("dl", { class: "facts" }, spend.map((p) => [h("dt", {}, p.project || "(no project)"), h("dd", {}, money(p.spentCents))]))
          : emptyState("Nothing spent this month."));
    })
    .catch((error) => toast(error.message, "bad"));
  return () => { left = true; };
}

export function notificationsPage(main) {
  let left = false;
  const list = h("ul", { class: "notes", id: "notifications" });
  replace(main, h("div", { class: "page-head" }, h("h1", {}, "Notifications")),
    h("section", { class: "card", "aria-label": "Notifications" }, list));
  api("GET", "/v1/notifications", { query: { pageSize: 100 } })
    .then((page) => {
      if (left) return;
      const notes = page.notifications || [];
      replace(list, notes.length ? notes.map((n) => {
        const href = n.jobId ? `/jobs/${n.jobId}` : `/bulk-jobs/${n.bulkJobId}`;
        const deliveries = (n.deliveries || []).map((d) =>
          `${statusName(d.channel, "DELIVERY_CHANNEL_")} ${d.target || ""}: ${statusName(d.state, "DELIVERY_STATE_")}` +
          `${d.lastError ? ` (${d.lastError})` : ""}`);
        return h("li", { dataset: { notificationId: n.id } },
          h("a", { href }, n.message || n.event || "Notification"),
          h("div", { class: "sub" }, [ago(n.createTime), n.event, ...deliveries].filter(Boolean).join(" · ")));
      }) : h("li", { class: "muted" }, "Nothing yet."));
    })
    .catch((error) => toast(error.message, "bad"));
  return () => { left = true; };
}
