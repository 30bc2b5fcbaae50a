// The dashboard: sign-in from the URL fragment or a pasted token, and a
// router over the pages by the address's path (`/jobs/<id>`, `/bulk-jobs`, ...;
// the server answers index.html for each), old `#/...` links taken too.

import { onError, setToken, token, user } from "./api.js";
import { button, h, navigate, replace } from "./ui.js";

// Each page's module is loaded when the page is first opened: the first
// screen waits for its own module only.
const load = {
  jobs: () => import("./jobs.js"),
  job: () => import("./job.js"),
  bulks: () => import("./bulks.js"),
  schedules: () => import("./schedules.js"),
  templates: () => import("./templates.js"),
  usage: () => import("./usage.js"),
};
let opening = 0; // which route() call is the newest
const main = document.getElementById("main");
let leave = () => {};

function takeTokenFromFragment() {
  const match = location.hash.match(/^#token=([^&]+)/);
  if (match) {
    setToken(decodeURIComponent(match[1]));
    // Drop the token from the address bar and history.
    history.replaceState(null, "", `${location.pathname}${location.search}`);
  }
}

// An old hash link (`#/jobs/<id>`, `#/bulk/<id>`) becomes its path.
function takeHashRoute() {
  const old = location.hash.replace(/^#/, "");
  if (!old.startsWith("/")) return;
  const path = old.replace(/^\/bulk(?=\/|$)/, "/bulk-jobs");
  history.replaceState(null, "", path);
}

function signIn(message = "") {
  opening += 1; // a page module still loading does not open over this form
  leave();
  leave = () => {};
  renderWho();
  const field = h("textarea", { id: "token", rows: 4, required: true, spellcheck: "false", autocomplete: "off" });
  const form = h(
    "form",
    {
      class: "card signin",
      onsubmit: (event) => {
        event.preventDefault();
        setToken(field.value);
        route();
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste a token: ", h("code", {}, "genjobs-server token --user NAME"), " prints one."),
    message ? h("p", { class: "error-text", role: "alert" }, message) : null,
    h("label", { for: "token" }, "Bearer token"),
    field,
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")),
  );
  replace(main, form);
  field.focus();
}

function renderWho() {
  const who = document.getElementById("who");
  if (!token()) {
    replace(who);
    return;
  }
  replace(
    who,
    h("span", { class: "user", title: "Signed in" }, user() || "signed in"),
    button("Sign out", () => {
      setToken("");
      signIn();
    }, "ghost small"),
  );
}

// The page at the address's path: [section, module, (module) => leave].
function pageOf(path) {
  let match;
  if ((match = path.match(/^\/jobs\/([\w-]+)$/))) return ["jobs", "job", (m) => m.jobPage(main, match[1])];
  if ((match = path.match(/^\/bulk-jobs\/([\w-]+)$/))) return ["bulk", "bulks", (m) => m.bulkPage(main, match[1])];
  if (path === "/bulk-jobs") return ["bulk", "bulks", (m) => m.bulkListPage(main)];
  if ((match = path.match(/^\/schedules(?:\/([\w-]+))?$/))) {
    return ["schedules", "schedules", (m) => (match[1] ? m.schedulePage(main, match[1]) : m.schedulesPage(main))];
  }
  if ((match = path.match(/^\/templates(?:\/([^/]+))?$/))) {
    const name = match[1] && decodeURIComponent(match[1]);
    return ["templates", "templates", (m) => (name ? m.templatePage(main, name) : m.templatesPage(main))];
  }
  if (path === "/usage") return ["usage", "usage", (m) => m.usagePage(main)];
  if (path === "/notifications") return ["notifications", "usage", (m) => m.notificationsPage(main)];
  return ["jobs", "jobs", (m) => m.jobsPage(main)];
}

async function route() {
  takeTokenFromFragment();
  takeHashRoute();
  if (!token()) {
    signIn();
    return;
  }
  renderWho();
  leave();
  leave = () => {};
  const [section, name, open] = pageOf(location.pathname.replace(/\/+$/, "") || "/");
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  const mine = ++opening;
  const module = await load[name]();
  if (mine === opening) leave = open(module); // else a newer route() opens its page
}

onError((error) => {
  if (error.status === 401) {
    setToken("");
    signIn(`${error.message}`);
  }
});
function moved() {
  route();
  // Keyboard and screen-reader users start reading the new page from its top.
  main.focus({ preventScroll: true });
}
window.addEventListener("popstate", moved);
window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#/")) moved();
});
// A click on a link to a page of ours opens it here, without reloading (a
// modified click still opens a new tab, as links do).
document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a[href^='/']");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || link.target) return;
  event.preventDefault();
  if (link.getAttribute("href") !== location.pathname) navigate(link.getAttribute("href"));
});
route();
