// The dashboard: sign-in from the URL fragment or a pasted token, and a
// router over the pages by the address's path (`/jobs/<id>`, `/bulk-jobs`, ...;
// the server answers index.html for each), old `#/...` links taken too.

import { onError, setToken, token, user } from "./api.js";
import { bulkListPage, bulkPage } from "./bulks.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { schedulePage, schedulesPage } from "./schedules.js";
import { templatePage, templatesPage } from "./templates.js";
import { notificationsPage, usagePage } from "./usage.js";
import { button, h, navigate, replace } from "./ui.js";

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

function route() {
  takeTokenFromFragment();
  takeHashRoute();
  if (!token()) {
    signIn();
    return;
  }
  renderWho();
  leave();
  const path = location.pathname.replace(/\/+$/, "") || "/";
  let match;
  let section = "jobs";
  if ((match = path.match(/^\/jobs\/([\w-]+)$/))) {
    leave = jobPage(main, match[1]);
  } else if ((match = path.match(/^\/bulk-jobs\/([\w-]+)$/))) {
    section = "bulk";
    leave = bulkPage(main, match[1]);
  } else if (path === "/bulk-jobs") {
    section = "bulk";
    leave = bulkListPage(main);
  } else if ((match = path.match(/^\/schedules(?:\/([\w-]+))?$/))) {
    section = "schedules";
    leave = match[1] ? schedulePage(main, match[1]) : schedulesPage(main);
  } else if ((match = path.match(/^\/templates(?:\/([^/]+))?$/))) {
    section = "templates";
    leave = match[1] ? templatePage(main, decodeURIComponent(match[1])) : templatesPage(main);
  } else if (path === "/usage") {
    section = "usage";
    leave = usagePage(main);
  } else if (path === "/notifications") {
    section = "notifications";
    leave = notificationsPage(main);
  } else {
    leave = jobsPage(main);
  }
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
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
