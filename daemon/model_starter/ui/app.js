// model-starter dashboard: plain JS, no build step. Data: GET /_ms/status once (and again
// after an event, for the counters events do not carry), live changes from the SSE stream
// /_ms/events, logs from /_ms/logs/NAME?follow=1. Every call goes through fetch so that
// the bearer token travels in a header (EventSource cannot send one; never in the URL).
import { HttpError, Unreachable, call, hasToken, readSSE, setToken } from "./api.js";
import { closeLog, isOpen, openLog, resumeLogs } from "./logs.js";
import { $, HOLDING, chart, el, fmtSeconds, renderCapacity } from "./view.js";

const MAX_HISTORY = 20;

const ui = {
  models: new Map(),     // name -> the model's status JSON, updated by events
  history: new Map(),    // name -> recent start durations (seconds)
  rows: new Map(),       // name -> {tr, cells, start, stop, log}
  resources: {},
  events: null,          // AbortController of the SSE stream
  retryMs: 1000,
  refreshTimer: 0,
};

// ---- connection state -------------------------------------------------------------------

function setConn(kind, text) {
  $("conn").className = `conn conn-${kind}`;
  $("conn-text").textContent = text;
}

function showBanner(title, detail) {
  const b = $("banner");
  b.replaceChildren();
  const strong = document.createElement("strong");
  strong.textContent = title;
  b.append(strong, document.createTextNode(detail || ""));
  b.hidden = false;
}

function hideBanner() { $("banner").hidden = true; }

function askToken(refused) {
  stopEvents();
  $("main").hidden = true;
  setConn("down", refused ? "token refused" : "token needed");
  const err = $("token-error");
  err.hidden = !refused;
  err.textContent = refused ? "The daemon refused this token (401 unauthorized). Check it and try again." : "";
  $("token-form").hidden = false;
  $("token-input").focus();
}

function failed(err) {
  if (err instanceof HttpError && err.status === 401) {
    askToken(hasToken());
    return;
  }
  stopEvents();
  if (err instanceof HttpError && (err.status === 403 || err.status === 404)) {
    setConn("down", "refused");
    showBanner(`The daemon refused access (${err.status}). `, err.message);
    return;  // retrying cannot change that
  }
  const what = err instanceof Unreachable
    ? "Cannot reach the model-starter daemon. "
    : `The daemon answered with an error (${err.status || "?"}). `;
  const secs = Math.round(ui.retryMs / 1000);
  setConn("down", "unreachable");
  showBanner(what, `${err.message ? `${err.message}. ` : ""}Retrying in ${secs} s…`);
  setTimeout(connect, ui.retryMs);
  ui.retryMs = Math.min(ui.retryMs * 2, 15000);
}

async function connect() {
  try {
    const [status, config] = await Promise.all([
      call("/status").then((r) => r.json()),
      call("/ui/config.json").then((r) => r.json()),
    ]);
    ui.retryMs = 1000;
    ui.resources = config.resources || {};
    hideBanner();
    $("token-form").hidden = true;
    $("main").hidden = false;
    applyStatus(status);
    openEvents();
    resumeLogs();
  } catch (err) {
    failed(err);
  }
}

// ---- status and events ------------------------------------------------------------------

function applyStatus(status) {
  const seen = new Set();
  for (const m of status.models || []) {
    seen.add(m.name);
    const old = ui.models.get(m.name);
    ui.models.set(m.name, m);
    if (Array.isArray(m.recent_start_seconds)) {
      ui.history.set(m.name, m.recent_start_seconds.slice(-MAX_HISTORY));
    } else if (!ui.history.has(m.name) || (!old && m.last_start_seconds != null)) {
      ui.history.set(m.name, m.last_start_seconds == null ? [] : [m.last_start_seconds]);
    }
  }
  for (const name of [...ui.models.keys()]) {
    if (!seen.has(name)) {
      ui.models.delete(name);
      const row = ui.rows.get(name);
      if (row) row.tr.remove();
      ui.rows.delete(name);
    }
  }
  renderAll();
}

function scheduleRefresh() {
  // Counters (held, in flight, starts) are not in the events: one status read after a burst.
  clearTimeout(ui.refreshTimer);
  ui.refreshTimer = setTimeout(async () => {
    try {
      applyStatus(await (await call("/status")).json());
    } catch (err) {
      if (!(err instanceof Unreachable)) failed(err);  // a lost stream reconnects on its own
    }
  }, 300);
}

function onEvent(kind, data) {
  const m = ui.models.get(data.model);
  if (kind === "reloaded") { connect(); return; }
  if (!m) return;
  if (kind === "status") {
    m.state = data.state;
  } else if (kind === "state") {
    m.state = data.new;
    m.since = data.time;
    if (data.new === "starting") m.starts = (m.starts || 0) + 1;
  } else if (kind === "started") {
    m.last_start_seconds = data.seconds;
    m.pid = data.pid;
    m.last_error = null;
    const h = ui.history.get(data.model) || [];
    h.push(data.seconds);
    ui.history.set(data.model, h.slice(-MAX_HISTORY));
  } else if (kind === "start_failed") {
    m.last_error = { reason: data.reason, detail: data.detail };
  } else if (kind === "stopped") {
    m.stop_reason = data.reason;
    m.pid = null;
  } else if (kind === "adopted") {
    m.pid = data.pid;
  }
  renderRow(m);
  showCapacity();
  if (kind !== "status") scheduleRefresh();
}

function stopEvents() {
  if (ui.events) ui.events.abort();
  ui.events = null;
}

async function openEvents() {
  stopEvents();
  const ctl = new AbortController();
  ui.events = ctl;
  try {
    const resp = await call("/events", { signal: ctl.signal });
    setConn("live", "live");
    await readSSE(resp, onEvent);
    if (ctl.signal.aborted) return;
    throw new Unreachable("the event stream ended");
  } catch (err) {
    if (ctl.signal.aborted || err.name === "AbortError") return;
    failed(err instanceof HttpError ? err : new Unreachable(err.message));
  }
}

// ---- rendering --------------------------------------------------------------------------

const COLUMNS = ["name", "node", "state", "pid", "port", "uptime", "starts", "last", "chart",
  "held", "error", "actions"];

function makeRow(name) {
  const tr = el("tr", { "data-model": name });
  const cells = {};
  const labels = [...document.querySelectorAll("#models thead th")].map((th) => th.textContent);
  COLUMNS.forEach((col, i) => {
    const td = el(i === 0 ? "th" : "td", { "data-label": labels[i], "data-col": col });
    if (i === 0) td.setAttribute("scope", "row");
    if (col === "node") td.className = "col-node";
    if (["pid", "port", "uptime", "starts", "last", "held"].includes(col)) td.className = "num";
    cells[col] = td;
    tr.append(td);
  });
  cells.name.classList.add("name");
  cells.name.textContent = name;
  const start = el("button", { type: "button", textContent: "Start", "data-action": "start",
    onclick: () => act(name, "start") });
  const stop = el("button", { type: "button", textContent: "Stop", "data-action": "stop",
    onclick: () => askStop(name) });
  const log = el("button", { type: "button", textContent: "Log", "data-action": "log",
    "aria-pressed": "false", onclick: () => toggleLog(name) });
  start.setAttribute("aria-label", `Start ${name}`);
  stop.setAttribute("aria-label", `Stop ${name}`);
  log.setAttribute("aria-label", `Log of ${name}`);
  cells.actions.append(el("div", { class: "actions" }, start, stop, log));
  const row = { tr, cells, start, stop, log };
  ui.rows.set(name, row);
  $("models").tBodies[0].append(tr);
  return row;
}

function renderRow(m) {
  const row = ui.rows.get(m.name) || makeRow(m.name);
  const c = row.cells;
  const state = m.state || "unknown";
  row.tr.dataset.state = state;
  const badge = el("span", { class: `state state-${state}`, textContent: state });
  const detail = el("span", { class: "state-detail", "data-role": "state-detail" });
  c.state.replaceChildren(el("span", { class: "state-wrap" }, badge, detail));
  c.node.textContent = m.node || "–";
  c.pid.textContent = m.pid ?? "–";
  c.port.textContent = m.port ?? "–";
  c.starts.textContent = m.failed_starts ? `${m.starts} (${m.failed_starts} failed)` : `${m.starts ?? 0}`;
  c.last.textContent = fmtSeconds(m.last_start_seconds);
  // In flight is measured while the model runs; a stopped model has none.
  const inFlight = HOLDING.has(state) ? m.in_flight ?? 0 : 0;
  c.held.textContent = `${m.held ?? 0} / ${inFlight}`;
  const err = m.last_error;
  c.error.textContent = err ? `${err.reason || err.error || "error"}: ${err.detail || ""}` : "–";
  c.error.className = err ? "err" : "empty-err";
  c.chart.replaceChildren(chart(m.name, ui.history.get(m.name) || []));
  row.start.disabled = state === "ready" || state === "starting" || state === "waking";
  row.stop.disabled = state === "stopped" || state === "stopping";
  tick(m);
}

function tick(m) {
  // What changes with the clock alone: uptime, and how long a start has been running.
  const row = ui.rows.get(m.name);
  if (!row) return;
  const age = m.since ? Math.max(0, Date.now() / 1000 - m.since) : null;
  row.cells.uptime.textContent = m.state === "ready" ? fmtSeconds(age) : "–";
  const detail = row.cells.state.querySelector("[data-role=state-detail]");
  if (!detail) return;
  if (m.state === "starting" && age != null) {
    const expected = m.expected_start_seconds;
    detail.textContent = expected != null
      ? `${fmtSeconds(age)} of ~${fmtSeconds(expected)}` : `for ${fmtSeconds(age)}`;
  } else if (m.state === "stopped" && m.stop_reason) {
    detail.textContent = m.stop_reason;
  } else {
    detail.textContent = "";
  }
}

function showCapacity() {
  renderCapacity($("capacity"), ui.resources, [...ui.models.values()]);
}

function renderAll() {
  const models = [...ui.models.values()];
  $("models").classList.toggle("has-node", models.some((m) => m.node));
  for (const m of models) renderRow(m);
  showCapacity();
}

// ---- actions ----------------------------------------------------------------------------

function say(text, isError) {
  const msg = $("action-msg");
  msg.textContent = text;
  msg.className = isError ? "msg error" : "msg";
}

async function act(name, action) {
  say(`${action === "start" ? "Starting" : "Stopping"} ${name}…`);
  try {
    await call(`/models/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    say(`${name}: ${action === "start" ? "ready" : "stopped"}.`);
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) { failed(err); return; }
    say(`${name}: ${action} failed: ${err.message}`, true);
  }
  scheduleRefresh();
}

async function askStop(name) {
  // Events do not carry the request counters: look at the model as it is right now.
  try {
    applyStatus(await (await call("/status")).json());
  } catch (err) {
    failed(err);
    return;
  }
  const m = ui.models.get(name) || {};
  if (!(m.busy || m.held > 0 || m.in_flight > 0)) { act(name, "stop"); return; }
  const dialog = $("stop-dialog");
  $("stop-text").textContent = `${name} is busy: ${m.held || 0} request(s) held and ` +
    `${m.in_flight || 0} in flight. Stopping it now ends those requests with an error; ` +
    "the next request starts it again.";
  dialog.returnValue = "";
  dialog.onclose = () => { if (dialog.returnValue === "stop") act(name, "stop"); };
  dialog.showModal();
}

// ---- logs -------------------------------------------------------------------------------

function toggleLog(name) {
  const pressed = (on) => ui.rows.get(name)?.log.setAttribute("aria-pressed", String(on));
  if (isOpen(name)) {
    closeLog(name);
    pressed(false);
  } else {
    openLog(name, () => pressed(false));
    pressed(true);
  }
}

// ---- start ------------------------------------------------------------------------------

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setToken($("token-input").value.trim());
  $("token-input").value = "";
  $("token-form").hidden = true;
  setConn("wait", "connecting…");
  connect();
});

setInterval(() => { for (const m of ui.models.values()) tick(m); }, 1000);
connect();
