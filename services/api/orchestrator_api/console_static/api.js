// The API, as the signed-in tenant: fetch() with the bearer key, and a task's events as
// Server-Sent Events read from a fetch() stream (EventSource cannot send the header).

const KEY = "ai-orchestrator.api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

export const unauthorized = new EventTarget();

/** JSON of ``path``; throws ApiError with the problem body for a non-2xx answer. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers(), cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    if (response.status === 401) unauthorized.dispatchEvent(new Event("unauthorized"));
    throw new ApiError(response.status, data);
  }
  return data;
}

const TERMINAL = new Set(["result", "error", "cancelled"]);

/**
 * Follow a task's events until its terminal one, calling ``onEvent({id, event, data})``.
 * A dropped connection is resumed with Last-Event-ID after a pause (the server's ``retry``,
 * then longer), so no event is lost or repeated. ``onState("live"|"reconnecting")`` tells
 * the page. Ends when ``signal`` aborts.
 */
export async function followEvents(taskId, { onEvent, onState, signal }) {
  let lastId = null;
  let retry = 2000;
  let failures = 0;
  const path = `/v1/tasks/${encodeURIComponent(taskId)}/events`;
  while (!signal.aborted) {
    let ended = false;
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      const response = await fetch(path, {
        headers: headers(extra), signal, cache: "no-store", credentials: "omit",
      });
      if (!response.ok) {
        let problem = null;
        try { problem = await response.json(); } catch { problem = null; }
        if (response.status === 401) unauthorized.dispatchEvent(new Event("unauthorized"));
        if (response.status < 500) throw new ApiError(response.status, problem);
        throw new Error(`HTTP ${response.status}`);
      }
      onState("live");
      failures = 0;
      for await (const message of sseMessages(response.body, signal)) {
        if (message.retry !== undefined) retry = message.retry;
        if (message.id !== undefined) lastId = message.id;
        if (!message.event) continue;
        let data = null;
        try { data = JSON.parse(message.data); } catch { data = null; }
        onEvent({ id: message.id, event: message.event, data: data || {} });
        if (TERMINAL.has(message.event)) ended = true;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError) throw error;
    }
    if (ended || signal.aborted) return;
    failures += 1;
    onState("reconnecting");
    await sleep(Math.min(retry * failures, 15000), signal);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** The messages of an SSE body (the WHATWG event-stream format): {id, event, data, retry}. */
export async function* sseMessages(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const onAbort = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", onAbort, { once: true });
  let buffer = "";
  let message = {};
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length || message.retry !== undefined || message.id !== undefined) {
            yield { ...message, data: data.join("\n") };
          }
          message = {};
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") message.event = value;
        else if (field === "id" && !value.includes("\0")) message.id = value;
        else if (field === "retry" && /^\d+$/.test(value)) message.retry = Number(value);
      }
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
