// Batches, models and the operator's view.

import { api } from "./api.js";
import { fill, h, when } from "./dom.js";

function table(headers, rows, testid) {
  return h("div", { class: "scroll" }, h("table", { dataset: { testid } },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows)));
}

function unix(seconds) {
  return typeof seconds === "number" ? when(new Date(seconds * 1000).toISOString()) : "–";
}

export function batchesView({ view, signal }) {
  const body = h("div", { dataset: { testid: "batches" } }, h("p", { class: "hint" }, "Loading…"));
  view.append(h("section", { "aria-labelledby": "batches-title" },
    h("h2", { id: "batches-title" }, "Batches"), body));
  async function refresh() {
    try {
      const page = await api("/v1/batches?limit=50", { signal });
      const rows = (page.data || []).map((batch) => {
        const counts = batch.request_counts || {};
        const total = counts.total || 0;
        const done = (counts.completed || 0) + (counts.failed || 0);
        return h("tr", { dataset: { testid: "batch-row" } },
          h("td", { class: "mono" }, batch.id),
          h("td", {}, h("span", { class: `badge ${batch.status}` }, batch.status)),
          h("td", {}, h("progress", { max: total || 1, value: done,
            "aria-label": `${done} of ${total} requests done` }),
          ` ${done}/${total}`, counts.failed ? ` (${counts.failed} failed)` : ""),
          h("td", {}, unix(batch.created_at)));
      });
      fill(body, rows.length
        ? table(["Batch", "Status", "Progress", "Created"], rows, "batch-list")
        : h("p", { class: "hint", dataset: { testid: "batches-empty" } }, "No batches yet."));
    } catch (error) {
      if (signal.aborted) return;
      fill(body, h("p", { class: "hint", dataset: { testid: "batches-empty" } },
        error.status === 404
          ? "This server has no Batch API (GET /v1/batches answers 404): nothing to show."
          : `Could not load the batches: ${error.message}`));
      return false;
    }
    return true;
  }
  refresh().then((ok) => {
    if (!ok) return;
    const timer = setInterval(() => { if (!document.hidden) refresh(); }, 3000);
    signal.addEventListener("abort", () => clearInterval(timer));
  });
}

export function modelsView({ view, signal }) {
  const body = h("div", {}, h("p", { class: "hint" }, "Loading…"));
  view.append(h("section", { "aria-labelledby": "models-title" },
    h("h2", { id: "models-title" }, "Models the live workers serve"), body));
  api("/v1/models", { signal }).then((list) => {
    const rows = list.data.map((m) => h("tr", { dataset: { testid: "model-row" } },
      h("td", { class: "mono" }, m.id), h("td", {}, m.owned_by), h("td", {}, unix(m.created))));
    fill(body, rows.length ? table(["Model", "Owned by", "Since"], rows, "model-list")
      : h("p", { class: "hint" }, "No worker is alive: tasks wait in the queue for one."),
    h("p", { class: "hint" }, "A provider prefix (openai/…, gemini/…) takes any of its "
      + "provider's model names, which cannot be listed."));
  }, (error) => {
    if (!signal.aborted) fill(body, h("p", { class: "error" }, error.message));
  });
}

const PRIORITY_ORDER = ["high", "normal", "low"];

function rank(name) {
  const i = PRIORITY_ORDER.indexOf(name);
  return i < 0 ? PRIORITY_ORDER.length : i;
}

/**
 * [priority, depth] pairs of GET /v1/admin/queues: one per priority when ``priorities`` is an
 * object ({"high": 3, ...}, a depth or an object with ``backlog``), else the one backlog.
 */
export function queueDepths(q) {
  const p = q.priorities;
  if (p && typeof p === "object") {
    return Object.keys(p)
      .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
      .map((name) => {
        const v = p[name];
        const depth = typeof v === "number" ? v : v && typeof v.backlog === "number" ? v.backlog : "–";
        return [name, depth];
      });
  }
  return [["all (one queue)", totalBacklog(q)]];
}

function totalBacklog(q) {
  return (q.queues || []).reduce((n, row) => n + (row.backlog || 0), 0);
}

export function operatorView({ view, signal }) {
  const queues = h("div", { dataset: { testid: "queues" } });
  const workers = h("div", { dataset: { testid: "workers" } });
  const letters = h("div", { dataset: { testid: "dead-letters" } });
  const message = h("p", { class: "hint", role: "status", dataset: { testid: "operator-status" } });
  const replayAll = h("button", { type: "button", dataset: { testid: "replay-all" } }, "Replay all");
  const purge = h("button", { type: "button", class: "danger", dataset: { testid: "purge" } },
    "Purge all");
  view.append(h("section", { "aria-labelledby": "operator-title" },
    h("h2", { id: "operator-title" }, "Operator"),
    h("h3", {}, "Queue depth"), queues,
    h("h3", {}, "Workers alive"), workers,
    h("h3", {}, "Dead letters"), h("div", { class: "row" }, replayAll, purge), message, letters));

  async function act(path, body, done) {
    try {
      const answer = await api(path, { method: "POST", body, signal });
      message.textContent = done(answer);
    } catch (error) {
      if (!signal.aborted) message.textContent = error.message;
    }
    refresh();
  }

  async function refresh() {
    try {
      const q = await api("/v1/admin/queues", { signal });
      const depthRows = queueDepths(q).map(([name, depth]) =>
        h("tr", { dataset: { testid: "queue-depth", priority: name } },
          h("th", { scope: "row" }, name), h("td", { class: "num" }, depth)));
      if (q.priorities && typeof q.priorities === "object") {
        // The priorities count the waiting rooms; the stream's own row holds those
        // dispatched to the workers and not yet read: the total has both.
        depthRows.push(h("tr", { dataset: { testid: "queue-depth-total" } },
          h("th", { scope: "row" }, "total, with those dispatched"),
          h("td", { class: "num" }, totalBacklog(q))));
      }
      fill(queues, table(["Priority", "Waiting"], depthRows, "queue-depths"),
      h("h4", {}, "Streams"),
      table(["Stream", "Group", "Priority", "Waiting", "Being worked on"],
          q.queues.map((row) => h("tr", {},
            h("td", { class: "mono" }, row.stream), h("td", {}, row.group),
            h("td", {}, row.priority ?? "–"),
            h("td", { class: "num" }, row.backlog), h("td", { class: "num" }, row.pending))),
          "queue-list"));
      fill(workers, q.workers.length ? table(["Consumer", "Providers", "Default model", "Slots", "Since"],
        q.workers.map((w) => h("tr", {}, h("td", { class: "mono" }, w.consumer),
          h("td", {}, w.providers.join(", ")), h("td", {}, w.default_model),
          h("td", { class: "num" }, w.concurrency), h("td", {}, unix(w.started_at)))), "worker-list")
        : h("p", { class: "hint" }, "No worker is alive."));
      const page = await api("/v1/admin/dead-letters?limit=100", { signal });
      fill(letters, page.data.length ? table(["Task", "Tenant", "Reason", "Deliveries", "Dead at", ""],
        page.data.map((d) => h("tr", { dataset: { testid: "dead-letter-row", taskId: d.task_id || "" } },
          h("td", { class: "mono" }, d.task_id || "–"), h("td", {}, d.tenant || "–"),
          h("td", {}, d.reason), h("td", { class: "num" }, d.delivery_count),
          h("td", {}, when(d.dead_at)),
          h("td", {}, d.task_id ? h("button", { type: "button", class: "small",
            dataset: { testid: "replay" }, "aria-label": `Replay task ${d.task_id}`, onclick: () =>
            act("/v1/admin/dead-letters/replay", { task_ids: [d.task_id] },
              (a) => `Replayed ${a.replayed.length} task(s).`) }, "Replay") : null))),
        "dead-letter-list")
        : h("p", { class: "hint" }, "No dead letters."),
      page.has_more ? h("p", { class: "hint" }, "Showing the oldest 100.") : null);
    } catch (error) {
      if (!signal.aborted) message.textContent = `Could not load: ${error.message}`;
    }
  }

  replayAll.addEventListener("click", () => act("/v1/admin/dead-letters/replay", { all: true },
    (a) => `Replayed ${a.replayed.length} task(s).`));
  let armed = null;
  purge.addEventListener("click", () => {
    if (!armed) {
      purge.textContent = "Click again to purge every dead letter";
      armed = setTimeout(() => { armed = null; purge.textContent = "Purge all"; }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    purge.textContent = "Purge all";
    act("/v1/admin/dead-letters/purge", {}, (a) => `Purged ${a.purged} dead letter(s).`);
  });
  refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, 3000);
  signal.addEventListener("abort", () => { clearInterval(timer); if (armed) clearTimeout(armed); });
}
