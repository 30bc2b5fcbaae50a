// The JSON API and its event streams, with the bearer token kept in session storage.

const TOKEN_KEY = "genjobs.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The token's user (its `sub`), read without verifying: only for display. */
export function user() {
  try {
    const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).sub || "";
  } catch {
    return "";
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.status || "";
    const info = (error.details || []).find((d) => (d["@type"] || "").endsWith("ErrorInfo"));
    this.reason = info ? info.reason : "";
  }
}

const listeners = new Set();
/** Called with every ApiError; the app signs out on UNAUTHENTICATED. */
export function onError(listener) {
  listeners.add(listener);
}

function headers(extra = {}) {
  return { authorization: `Bearer ${token()}`, ...extra };
}

/** One call: `api("GET", "/v1/jobs", {query})` or `api("POST", path, {body})`. */
export async function api(method, path, { query, body } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      for (const one of [].concat(value)) if (one !== "" && one != null) params.append(key, one);
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  // index.html started the first page's requests early; each is used once.
  const early = method === "GET" && window.genjobsFirst && window.genjobsFirst[url];
  if (early) delete window.genjobsFirst[url];
  const answer = await (early || fetch(url, init));
  const data = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const error = new ApiError(answer.status, data);
    listeners.forEach((l) => l(error));
    throw error;
  }
  return data;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Heartbeats come every 15 s on an idle stream; three missed is a dead connection.
const SILENCE_MS = 45000;

/**
 * Follow a server-sent event stream (WatchJob, WatchBulkJob, WatchJobs). Calls
 * `onEvent(message)` for each event; `isLast(message)` says whether the
 * stream ends after it (null: a stream that never ends, WatchJobs). A dropped
 * stream reconnects with Last-Event-ID, so nothing is missed or seen twice;
 * `onOpen(count)` runs as each connection opens (a stream without replay
 * reads the state again then). Returns {close()}.
 */
export function follow(path, onEvent, isLast, onFail = () => {}, onOpen = () => {}) {
  const abort = new AbortController();
  let lastId = "";
  let closed = false;
  let opened = 0;

  async function once() {
    const extra = lastId && isLast ? { "Last-Event-ID": lastId } : {};
    const answer = await fetch(path, { headers: headers(extra), signal: abort.signal });
    if (!answer.ok) {
      const error = new ApiError(answer.status, await answer.json().catch(() => ({})));
      if (answer.status >= 500 || answer.status === 429) return "retry";
      listeners.forEach((l) => l(error));
      onFail(error);
      return "end";
    }
    onOpen(opened++);
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let seen = 0;
    let timer;
    const watchdog = () => {
      clearTimeout(timer);
      timer = setTimeout(() => reader.cancel(), SILENCE_MS);
    };
    watchdog();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        watchdog();
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let id = "", kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (!data) continue; // a heartbeat comment
          if (kind === "error") return "retry"; // e.g. the server restarting: resume
          if (id) lastId = id;
          seen += 1;
          const message = JSON.parse(data);
          onEvent(message);
          if (isLast && isLast(message)) return "end";
        }
      }
    } finally {
      clearTimeout(timer);
    }
    // Ended without a final event: dropped, unless a resumed stream had nothing more.
    return isLast && seen === 0 && lastId ? "end" : "retry";
  }

  (async () => {
    let delay = 250;
    while (!closed) {
      let outcome = "retry";
      try {
        outcome = await once();
      } catch {
        outcome = "retry";
      }
      if (outcome === "end" || closed) return;
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  })();

  return {
    close() {
      closed = true;
      abort.abort();
    },
  };
}
