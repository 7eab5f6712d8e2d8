// The tenant's task list (live) and the form that submits a task.

import { api } from "./api.js";
import { cost, durations, fill, h, seconds } from "./dom.js";

const POLL_MS = 2000;

function row(task, now) {
  const { wait, run } = durations(task, now);
  const link = h("a", { href: `#/task/${encodeURIComponent(task.id)}` }, task.id);
  return h(
    "tr",
    { dataset: { testid: "task-row", taskId: task.id } },
    h("td", { class: "mono" }, link),
    h("td", {}, h("span", { class: `badge ${task.status}` }, task.status)),
    h("td", {}, task.model || "default"),
    h("td", { class: "num" }, seconds(wait)),
    h("td", { class: "num" }, seconds(run)),
    h("td", { class: "num" }, cost(task.result && task.result.cost_usd)),
  );
}

export function taskListView({ view, signal }) {
  const status = h("select", { id: "filter", "aria-label": "Status filter" },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) =>
      h("option", { value: s }, s || "all statuses")));
  const body = h("tbody");
  const note = h("p", { class: "hint", role: "status" });
  const more = h("button", { type: "button", hidden: true }, "Older tasks");
  let after = null;
  let older = [];
  view.append(
    h("section", { "aria-labelledby": "tasks-title" },
      h("div", { class: "row" },
        h("h2", { id: "tasks-title" }, "Tasks"),
        h("a", { href: "#/new", class: "button" }, "New task"),
        status),
      h("div", { class: "scroll" },
        h("table", { dataset: { testid: "task-list" } },
          h("thead", {}, h("tr", {},
            ["Task", "Status", "Model", "Queue wait", "Run time", "Cost"].map((t) =>
              h("th", { scope: "col" }, t)))),
          body)),
      more, note));

  async function refresh() {
    const query = new URLSearchParams({ limit: "50" });
    if (status.value) query.set("status", status.value);
    try {
      const page = await api(`/v1/tasks?${query}`, { signal });
      const now = Date.now();
      const seen = new Set(page.data.map((t) => t.id));
      fill(body, page.data.map((t) => row(t, now)),
        older.filter((t) => !seen.has(t.id)).map((t) => row(t, now)));
      if (!older.length) {
        after = page.has_more ? page.last_id : null;
        more.hidden = !page.has_more;
      }
      note.textContent = page.data.length ? "" : "No tasks yet (finished tasks expire).";
    } catch (error) {
      if (!signal.aborted) note.textContent = `Could not load the tasks: ${error.message}`;
    }
  }

  more.addEventListener("click", async () => {
    const query = new URLSearchParams({ limit: "50", after });
    if (status.value) query.set("status", status.value);
    const page = await api(`/v1/tasks?${query}`, { signal });
    older = older.concat(page.data);
    after = page.has_more ? page.last_id : null;
    more.hidden = !page.has_more;
    refresh();
  });
  status.addEventListener("change", () => { older = []; refresh(); });
  refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
}

function field(label, control, help) {
  const id = control.id;
  return h("div", { class: "field" },
    h("label", { for: id }, label), control,
    help ? h("p", { class: "hint", id: `${id}-help` }, help) : null);
}

function turn(role = "user", content = "") {
  const roleSelect = h("select", { "aria-label": "Role", class: "role" },
    ["system", "user", "assistant"].map((r) => h("option", { value: r, selected: r === role }, r)));
  const text = h("textarea", { rows: 2, "aria-label": "Message", class: "content" });
  text.value = content;
  const item = h("li", { class: "turn" }, roleSelect, text);
  item.append(h("button", { type: "button", class: "small", onclick: () => item.remove() },
    "Remove"));
  return item;
}

export function newTaskView({ view, signal }) {
  const mode = h("fieldset", { class: "mode" }, h("legend", {}, "Input"),
    h("label", {}, h("input", { type: "radio", name: "mode", value: "prompt", checked: true }),
      " Prompt"),
    h("label", {}, h("input", { type: "radio", name: "mode", value: "messages" }),
      " Conversation"));
  const prompt = h("textarea", { id: "prompt", rows: 5, dataset: { testid: "prompt" } });
  const system = h("textarea", { id: "system", rows: 2, dataset: { testid: "system" } });
  const turns = h("ol", { class: "turns", id: "turns" }, turn("user"));
  const conversation = h("div", { class: "field", hidden: true },
    h("span", { class: "label" }, "Conversation"), turns,
    h("button", { type: "button", onclick: () => turns.append(turn("user")) }, "Add message"));
  const model = h("input", {
    id: "model", list: "models", autocomplete: "off", spellcheck: "false",
    placeholder: "worker default", dataset: { testid: "model" },
  });
  const models = h("datalist", { id: "models" });
  const parameters = h("textarea", {
    id: "parameters", rows: 2, spellcheck: "false", class: "mono",
    placeholder: '{"temperature": 0.2}', dataset: { testid: "parameters" },
  });
  const errors = h("div", { class: "error", role: "alert", dataset: { testid: "form-error" } });
  const submit = h("button", { type: "submit", dataset: { testid: "submit" } }, "Submit");
  const promptField = field("Prompt", prompt);
  const systemField = field("System (optional)", system);
  const form = h("form", { id: "task-form", novalidate: true },
    mode, promptField, systemField, conversation,
    field("Model", model, "Leave empty for the worker's default model."), models,
    field("Parameters (JSON object, optional)", parameters,
      'e.g. {"temperature": 0.2} or, on echo, {"latency_ms": 2000, "chunk_delay_ms": 50}'),
    errors, submit, h("p", { class: "hint" }, "Ctrl+Enter submits from any text field."));
  view.append(h("section", { "aria-labelledby": "new-title" },
    h("h2", { id: "new-title" }, "New task"), form));

  mode.addEventListener("change", () => {
    const messages = form.elements.mode.value === "messages";
    promptField.hidden = messages;
    systemField.hidden = messages;
    conversation.hidden = !messages;
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  api("/v1/models", { signal }).then((list) => {
    fill(models, list.data.map((m) => h("option", { value: m.id })));
  }, () => {});

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(errors);
    const body = {};
    if (form.elements.mode.value === "messages") {
      body.messages = [...turns.querySelectorAll(".turn")].map((item) => ({
        role: item.querySelector(".role").value,
        content: item.querySelector(".content").value,
      }));
    } else {
      body.prompt = prompt.value;
      if (system.value.trim()) body.system = system.value;
    }
    if (model.value.trim()) body.model = model.value.trim();
    if (parameters.value.trim()) {
      try {
        body.parameters = JSON.parse(parameters.value);
      } catch {
        fill(errors, "Parameters are not valid JSON.");
        parameters.focus();
        return;
      }
      if (typeof body.parameters !== "object" || Array.isArray(body.parameters)
          || body.parameters === null) {
        fill(errors, "Parameters must be a JSON object.");
        parameters.focus();
        return;
      }
    }
    submit.disabled = true;
    try {
      const task = await api("/v1/tasks", { method: "POST", body, signal });
      location.hash = `#/task/${encodeURIComponent(task.id)}`;
    } catch (error) {
      const list = (error.problem && error.problem.errors) || [];
      fill(errors, h("p", {}, error.message),
        list.length ? h("ul", {}, list.map((e) => h("li", {}, `${e.field}: ${e.message}`))) : null);
    } finally {
      submit.disabled = false;
    }
  });
  prompt.focus();
}
