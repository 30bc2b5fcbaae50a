// Templates: the list, and one template's request with Submit (a job or bulk
// job from it, as `genjobs submit --template` does) and Delete.

import { api } from "./api.js";
import { button, confirmDialog, emptyState, h, jobTitle, modeName, navigate, replace, toast, when, time } from "./ui.js";

function what(template) {
  if (template.bulkJob) return `bulk job · ${(template.bulkJob.items || []).length} ${modeName(template.bulkJob.mode)} items`;
  const job = template.job || {};
  return `job · ${modeName(job.mode)} · ${jobTitle(job)}`;
}

export function templatesPage(main) {
  let left = false;
  const tbody = h("tbody");
  replace(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Templates"),
      h("p", { class: "muted" }, "Create one with ", h("code", {}, "genjobs template create"), ".")),
    h("section", { class: "card table-card", "aria-label": "Templates" },
      h("div", { class: "table-wrap" },
        h("table", { class: "jobs", id: "templates-table" },
          h("thead", {}, h("tr", {}, ["Template", "Makes", "Changed"].map((t) => h("th", { scope: "col" }, t)))), tbody))),
  );
  api("GET", "/v1/templates", { query: { pageSize: 100 } })
    .then((page) => {
      if (left) return;
      const list = page.templates || [];
      replace(tbody, list.length ? list.map((t) => h("tr", { dataset: { template: t.name } },
        h("td", { class: "title", "data-label": "Template" }, h("a", { href: `/templates/${encodeURIComponent(t.name)}` }, t.name)),
        h("td", { "data-label": "Makes" }, what(t)),
        h("td", { "data-label": "Changed" }, when(time(t.updateTime || t.createTime)))))
        : h("tr", {}, h("td", { colspan: 3 }, emptyState("No templates yet."))));
    })
    .catch((error) => toast(error.message, "bad"));
  return () => { left = true; };
}

export function templatePage(main, name) {
  let left = false;
  const head = h("div", { class: "page-head" });
  const body = h("pre", { class: "request", id: "template-request" });
  replace(
    main,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "/templates" }, "Templates"), " / ", h("span", {}, name)),
    head,
    h("section", { class: "card", "aria-labelledby": "request-title" }, h("h2", { id: "request-title" }, "Request"), body),
  );

  async function submit(template) {
    try {
      if (template.bulkJob) {
        const bulk = await api("POST", "/v1/bulkJobs", { body: { template: name } });
        toast(`Queued a bulk job from ${name}.`, "good");
        navigate(`/bulk-jobs/${bulk.id}`);
      } else {
        const job = await api("POST", "/v1/jobs", { body: { template: name } });
        toast(`Queued “${jobTitle(job)}”.`, "good");
        navigate(`/jobs/${job.id}`);
      }
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  async function remove() {
    if (!(await confirmDialog("Delete this template?", "Jobs made from it are kept; schedules naming it fail their runs.", "Delete"))) return;
    try {
      await api("DELETE", `/v1/templates/${encodeURIComponent(name)}`);
      toast(`Deleted ${name}.`);
      navigate("/templates");
    } catch (error) {
      toast(error.message, "bad");
    }
  }

  api("GET", `/v1/templates/${encodeURIComponent(name)}`)
    .then((t) => {
      if (left) return;
      replace(head, h("div", {}, h("h1", {}, t.name), h("p", { class: "muted" }, what(t))),
        h("div", { class: "head-side", dataset: { template: t.name } },
          h("div", { class: "actions" }, button("Submit", () => submit(t), "primary"), button("Delete", remove, "danger"))));
      // As text: the stored request, whole.
      body.textContent = JSON.stringify(t.job || t.bulkJob || {}, null, 2);
    })
    .catch((error) => replace(head, h("h1", {}, "Template not found"), h("p", { class: "muted" }, error.message)));
  return () => { left = true; };
}
