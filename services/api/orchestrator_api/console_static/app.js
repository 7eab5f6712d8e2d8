// The console's shell: sign-in, the section links, and a hash router over the views.

import { api, apiKey, setApiKey, unauthorized } from "./api.js";
import { fill, h } from "./dom.js";
import { taskListView, newTaskView } from "./tasks.js";
import { taskView } from "./task.js";
import { batchesView, modelsView, operatorView } from "./more.js";

const $ = (id) => document.getElementById(id);
let config = null;
let current = null; // AbortController of the view on screen

async function signIn(key) {
  setApiKey(key);
  try {
    config = await api("/v1/console/config");
  } catch (error) {
    setApiKey(null);
    config = null;
    throw error;
  }
  $("who").textContent = `tenant ${config.tenant}`;
  $("nav-operator").hidden = !config.admin;
  $("nav").hidden = false;
  $("sign-in-view").hidden = true;
  $("view").hidden = false;
}

function signOut(message = "") {
  if (current) current.abort();
  setApiKey(null);
  config = null;
  $("nav").hidden = true;
  $("view").hidden = true;
  fill($("view"));
  $("sign-in-view").hidden = false;
  $("sign-in-error").textContent = message;
  $("api-key").value = "";
  $("api-key").focus();
}

function route() {
  if (!config) return;
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  const hash = location.hash || "#/tasks";
  const view = $("view");
  const [, section, ...rest] = hash.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  fill(view);
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#/${section}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const context = { view, signal, config };
  if (section === "task" && arg) taskView(context, arg);
  else if (section === "new") newTaskView(context);
  else if (section === "batches") batchesView(context);
  else if (section === "models") modelsView(context);
  else if (section === "operator" && config.admin) operatorView(context);
  else taskListView(context);
}

function start() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    $("sign-in-error").textContent = "";
    if (!key) {
      $("sign-in-error").textContent = "Enter an API key.";
      return;
    }
    try {
      await signIn(key);
      $("api-key").value = "";
      route();
      $("main").focus();
    } catch (error) {
      $("sign-in-error").textContent =
        error.status === 401 ? "That API key is not valid." : `Cannot sign in: ${error.message}`;
    }
  });
  $("sign-out").addEventListener("click", () => signOut());
  unauthorized.addEventListener("unauthorized", () => {
    if (config) signOut("The API key is no longer accepted: sign in again.");
  });
  window.addEventListener("hashchange", route);
  const key = apiKey();
  if (key) {
    signIn(key).then(route, () => signOut("Sign in again."));
  } else {
    $("api-key").focus();
  }
}

start();
export { h };
