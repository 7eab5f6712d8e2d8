// Building the page: every value goes in as text (textContent / attributes), never as HTML.

/** An element: h("td", {class: "x", dataset: {testid: "y"}}, "text", child, ...). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace ``el``'s children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function seconds(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function cost(value) {
  return typeof value === "number" ? `$${value.toFixed(6)}` : "–";
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** Queue wait and run time of a task (ms; the running clock for one not yet done). */
export function durations(task, now = Date.now()) {
  const created = Date.parse(task.created_at);
  const started = task.started_at ? Date.parse(task.started_at) : null;
  const finished = task.finished_at ? Date.parse(task.finished_at) : null;
  const wait = started !== null ? started - created : (finished ?? now) - created;
  const run = started !== null ? (finished ?? now) - started : null;
  return { wait, run };
}
