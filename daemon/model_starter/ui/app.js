// model-starter dashboard: plain JS, no build step. Data: GET /_ms/status once (and again
// after an event, for the counters events do not carry), live changes from the SSE stream
// /_ms/events, logs from /_ms/logs/NAME?follow=1. Every call goes through fetch so that
// the bearer token travels in a header (EventSource cannot send one; never in the URL).
"use strict";

const API = "/_ms";
const TOKEN_KEY = "model-starter-token";
const MAX_LOG_LINES = 1000;
const MAX_HISTORY = 20;
const HOLDING = new Set(["starting", "ready", "stopping"]);

const ui = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  models: new Map(),     // name -> the model's status JSON, updated by events
  history: new Map(),    // name -> recent start durations (seconds)
  rows: new Map(),       // name -> {tr, cells}
  resources: {},
  events: null,          // AbortController of the SSE stream
  logs: new Map(),       // name -> {panel, pre, status, ctl}
  retryMs: 1000,
  refreshTimer: 0,
};

const $ = (id) => document.getElementById(id);

class HttpError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}
class Unreachable extends Error {}

async function call(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (ui.token) headers.Authorization = `Bearer ${ui.token}`;
  let resp;
  try {
    resp = await fetch(API + path, { ...opts, headers, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Unreachable(String(err));
  }
  if (!resp.ok) {
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    throw new HttpError(resp.status, body);
  }
  return resp;
}

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
    askToken(Boolean(ui.token));
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
    for (const [name, log] of ui.logs) if (!log.live) followLog(name, log, 0);
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
  renderCapacity();
  if (kind !== "status") scheduleRefresh();
}

function stopEvents() {
  if (ui.events) ui.events.abort();
  ui.events = null;
}

async function readSSE(resp, onMessage) {
  // A minimal text/event-stream parser over a streamed fetch body.
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onMessage(event, JSON.parse(data.join("\n")));
    }
  }
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

function fmtSeconds(s) {
  if (s == null || !isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  const h = Math.floor(s / 3600);
  return h < 48 ? `${h} h ${Math.floor((s % 3600) / 60)} min` : `${Math.floor(h / 24)} d ${h % 24} h`;
}

function colour(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h}, 55%, 48%)`;
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

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
  row.start.disabled = state === "ready" || state === "starting";
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

function chart(name, values) {
  if (!values.length) return el("span", { class: "spark-none", textContent: "none yet" });
  const NS = "http://www.w3.org/2000/svg";
  const W = 110, H = 28, P = 3;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  const label = `Recent start durations of ${name}: ${values.map((v) => fmtSeconds(v)).join(", ")}`;
  svg.setAttribute("aria-label", label);
  const title = document.createElementNS(NS, "title");
  title.textContent = label;
  svg.append(title);
  const max = Math.max(...values) || 1;
  const step = values.length > 1 ? (W - 2 * P) / (values.length - 1) : 0;
  const pts = values.map((v, i) => [P + i * step, H - P - (v / max) * (H - 2 * P)]);
  const base = document.createElementNS(NS, "line");
  base.setAttribute("class", "base");
  base.setAttribute("x1", 0); base.setAttribute("x2", W);
  base.setAttribute("y1", H - P); base.setAttribute("y2", H - P);
  svg.append(base);
  if (pts.length > 1) {
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const [lx, ly] = pts[pts.length - 1];
  const dot = document.createElementNS(NS, "circle");
  dot.setAttribute("cx", lx); dot.setAttribute("cy", ly); dot.setAttribute("r", 2.5);
  svg.append(dot);
  return svg;
}

function renderCapacity() {
  const box = $("capacity");
  box.replaceChildren();
  for (const [res, cap] of Object.entries(ui.resources)) {
    const holders = [...ui.models.values()]
      .filter((m) => HOLDING.has(m.state) && (m.requires || {})[res] > 0)
      .map((m) => [m.name, m.requires[res], m.state]);
    const used = holders.reduce((a, [, n]) => a + n, 0);
    const bar = el("div", { class: "bar", role: "img" });
    bar.setAttribute("aria-label", `${res}: ${used} of ${cap} held` +
      holders.map(([n, a]) => `, ${n} ${a}`).join(""));
    const legend = el("ul", { class: "legend" });
    for (const [name, amount, state] of holders) {
      const seg = el("div", { class: "seg", title: `${name}: ${amount} (${state})` });
      seg.style.width = `${Math.min(100, (amount / cap) * 100)}%`;
      seg.style.backgroundColor = colour(name);
      bar.append(seg);
      const sw = el("span", { class: "sw" });
      sw.style.backgroundColor = colour(name);
      legend.append(el("li", {}, sw, `${name} ${amount} (${state})`));
    }
    if (!holders.length) legend.append(el("li", { textContent: "nothing running" }));
    const head = el("div", { class: "res-head" }, el("span", { textContent: res }),
      el("span", { textContent: `${+used.toFixed(3)} / ${cap}` }));
    box.append(el("div", { class: "res", "data-resource": res }, head, bar, legend));
  }
}

function renderAll() {
  const models = [...ui.models.values()];
  $("models").classList.toggle("has-node", models.some((m) => m.node));
  for (const m of models) renderRow(m);
  renderCapacity();
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
  if (ui.logs.has(name)) closeLog(name); else openLog(name);
}

function closeLog(name) {
  const log = ui.logs.get(name);
  if (!log) return;
  log.ctl.abort();
  log.panel.remove();
  ui.logs.delete(name);
  const row = ui.rows.get(name);
  if (row) row.log.setAttribute("aria-pressed", "false");
  $("logs-hint").hidden = ui.logs.size > 0;
}

function openLog(name) {
  const pre = el("pre", { tabIndex: 0 });
  pre.setAttribute("aria-label", `Log of ${name}`);
  const status = el("span", { class: "log-status", textContent: "connecting…" });
  const close = el("button", { type: "button", textContent: "Close",
    onclick: () => closeLog(name) });
  close.setAttribute("aria-label", `Close the log of ${name}`);
  const panel = el("section", { class: "log-panel", "data-model": name },
    el("header", {}, el("h3", { textContent: name }), status, close), pre);
  $("logs").append(panel);
  const log = { panel, pre, status, ctl: new AbortController() };
  ui.logs.set(name, log);
  ui.rows.get(name)?.log.setAttribute("aria-pressed", "true");
  $("logs-hint").hidden = true;
  followLog(name, log, 200);
  panel.scrollIntoView({ block: "nearest" });
}

function appendLines(log, lines) {
  if (!lines.length) return;
  const atEnd = log.pre.scrollTop + log.pre.clientHeight >= log.pre.scrollHeight - 4;
  const node = document.createTextNode(lines.map((l) => `${l}\n`).join(""));
  node.lineCount = lines.length;
  log.pre.append(node);
  log.lines = (log.lines || 0) + lines.length;
  while (log.lines > MAX_LOG_LINES && log.pre.childNodes.length > 1) {
    log.lines -= log.pre.firstChild.lineCount || 0;
    log.pre.firstChild.remove();
  }
  if (atEnd) log.pre.scrollTop = log.pre.scrollHeight;
}

async function followLog(name, log, lines) {
  const path = `/logs/${encodeURIComponent(name)}?follow=1&lines=${lines}`;
  try {
    const resp = await call(path, { signal: log.ctl.signal });
    log.status.textContent = "following";
    log.live = true;
    let ended = null;
    await readSSE(resp, (kind, data) => {
      if (kind === "lines") appendLines(log, data.lines);
      else if (kind === "rotated") appendLines(log, ["── the model restarted: a new log ──"]);
      else if (kind === "end") ended = data.reason;
    });
    if (log.ctl.signal.aborted) return;
    if (ended === "lifetime") { followLog(name, log, 0); return; }  // a follow is bounded
    log.live = false;
    log.status.textContent = "stopped following (the daemon went away)";
  } catch (err) {
    if (log.ctl.signal.aborted || err.name === "AbortError") return;
    log.live = false;
    log.status.textContent = err instanceof HttpError
      ? `refused: ${err.message}` : "cannot reach the daemon";
  }
}

// ---- start ------------------------------------------------------------------------------

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  ui.token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, ui.token);
  $("token-input").value = "";
  $("token-form").hidden = true;
  setConn("wait", "connecting…");
  connect();
});

setInterval(() => { for (const m of ui.models.values()) tick(m); }, 1000);
connect();
