// One task: its record, its answer streaming live, cancel, and the link to its trace.

import { api, ApiError, followEvents } from "./api.js";
import { cost, durations, fill, h, seconds, when } from "./dom.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

function traceHref(template, traceId) {
  if (!template || !traceId || !/^[0-9a-f]{32}$/.test(traceId)) return null;
  const href = template.split("{trace_id}").join(encodeURIComponent(traceId));
  return /^https?:\/\//i.test(href) ? href : null;
}

function usageText(usage) {
  if (!usage) return "–";
  const parts = [];
  for (const [name, value] of Object.entries(usage)) {
    if (typeof value === "number") parts.push(`${name.replaceAll("_", " ")} ${value}`);
  }
  return parts.join(", ") || "–";
}

export function taskView({ view, signal, config }, taskId) {
  const status = h("span", { class: "badge", dataset: { testid: "status" } }, "loading");
  const stream = h("span", { class: "hint", role: "status", dataset: { testid: "stream-state" } });
  const answer = h("pre", { class: "answer", dataset: { testid: "answer" }, "aria-live": "polite" });
  const error = h("div", { class: "error", role: "alert", dataset: { testid: "task-error" } });
  const cancel = h("button", { type: "button", dataset: { testid: "cancel" }, disabled: true },
    "Cancel");
  const trace = h("span", { class: "trace" });
  const details = h("dl", { class: "details" });
  const title = h("h2", { id: "task-title", class: "mono" }, taskId);
  view.append(h("section", { "aria-labelledby": "task-title" },
    h("p", {}, h("a", { href: "#/tasks" }, "← Tasks")),
    title,
    h("div", { class: "row" }, status, cancel, trace, stream),
    error,
    h("h3", {}, "Answer"), answer,
    h("h3", {}, "Details"), details));

  let task = null;
  let attempt = null;
  let text = "";

  function show(record) {
    task = record;
    status.textContent = record.status;
    status.className = `badge ${record.status}`;
    cancel.disabled = FINISHED.has(record.status);
    const { wait, run } = durations(record);
    const result = record.result;
    const items = [
      ["Model", (result && result.model) || record.model || "default"],
      ["Provider", (result && result.provider) || "–"],
      ["Attempts", record.attempts],
      ["Created", when(record.created_at)],
      ["Started", when(record.started_at)],
      ["Finished", when(record.finished_at)],
      ["Queue wait", seconds(wait)],
      ["Run time", seconds(run)],
      ["Usage", usageText(result && result.usage)],
      ["Cost", cost(result && result.cost_usd)],
      ["Finish reason", (result && result.finish_reason) || "–"],
      ["Cached", record.cached ? "yes (prompt cache)" : record.joined ? "joined an identical task" : "no"],
      ["Trace id", record.trace_id || "–"],
    ];
    fill(details, items.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
    if (record.error) {
      fill(error, h("strong", {}, record.error.type), ": ", record.error.message);
    }
    if (result && typeof result.text === "string") {
      text = result.text;
      answer.textContent = text;
    } else if (record.status === "cancelled" && record.partial_text) {
      answer.textContent = record.partial_text;
    }
    const href = traceHref(config.trace_url, record.trace_id);
    if (href && !trace.firstChild) {
      trace.append(h("a", {
        href, target: "_blank", rel: "noopener noreferrer", dataset: { testid: "trace-link" },
      }, "View trace"));
    }
  }

  let loadFailed = false; // the error shown is a failed load (cleared by the next good one)

  async function reload() {
    try {
      const record = await api(`/v1/tasks/${encodeURIComponent(taskId)}`, { signal });
      if (loadFailed) fill(error);
      loadFailed = false;
      show(record);
      return true;
    } catch (err) {
      if (signal.aborted) return false;
      if (err instanceof ApiError && err.status === 404) {
        status.textContent = "not found";
        status.className = "badge failed";
        fill(error, "There is no such task of yours (or it has expired).");
      } else {
        fill(error, `Could not load the task: ${err.message}`);
        loadFailed = true;
      }
      return false;
    }
  }

  function onEvent({ event, data }) {
    if (event === "status") {
      status.textContent = data.status;
      status.className = `badge ${data.status}`;
      cancel.disabled = FINISHED.has(data.status);
      if (data.attempt !== attempt && data.status === "running") {
        // A new attempt voids the text of the earlier one.
        attempt = data.attempt;
        text = "";
        answer.textContent = "";
      }
      reload();
    } else if (event === "delta") {
      if (data.attempt !== attempt) {
        attempt = data.attempt;
        text = "";
      }
      text += data.text || "";
      answer.textContent = text;
    } else if (event === "result") {
      text = data.text || "";
      answer.textContent = text;
      reload();
    } else if (event === "error") {
      fill(error, h("strong", {}, data.type || "error"), ": ", data.message || "");
      reload();
    } else if (event === "cancelled") {
      answer.textContent = data.partial_text || text;
      reload();
    }
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      show(await api(`/v1/tasks/${encodeURIComponent(taskId)}/cancel`, { method: "POST", signal }));
    } catch (err) {
      if (!signal.aborted) fill(error, `Could not cancel: ${err.message}`);
      reload();
    }
  });

  reload().then((found) => {
    if (!found || signal.aborted) return;
    followEvents(taskId, {
      signal,
      onEvent,
      onState: (state) => {
        stream.textContent = state === "live" ? "live" : "connection lost: reconnecting…";
      },
    }).then(() => {
      if (!signal.aborted) stream.textContent = "";
    }, (err) => {
      if (!signal.aborted) stream.textContent = `stream ended: ${err.message}`;
    });
  });
}
