// Log panels: each follows one model's log over /_ms/logs/NAME?follow=1 (an SSE stream,
// bounded by the daemon: when its lifetime ends the panel asks again).
import { HttpError, call, readSSE } from "./api.js";
import { $, el } from "./view.js";

const MAX_LOG_LINES = 1000;
const panels = new Map();  // name -> {panel, pre, status, ctl, live, lines}

export function isOpen(name) { return panels.has(name); }

export function closeLog(name) {
  const log = panels.get(name);
  if (!log) return;
  log.ctl.abort();
  log.panel.remove();
  panels.delete(name);
  $("logs-hint").hidden = panels.size > 0;
}

export function openLog(name, onClose) {
  const pre = el("pre", { tabIndex: 0 });
  pre.setAttribute("aria-label", `Log of ${name}`);
  const status = el("span", { class: "log-status", textContent: "connecting…" });
  const close = el("button", { type: "button", textContent: "Close",
    onclick: () => { closeLog(name); onClose(); } });
  close.setAttribute("aria-label", `Close the log of ${name}`);
  const panel = el("section", { class: "log-panel", "data-model": name },
    el("header", {}, el("h3", { textContent: name }), status, close), pre);
  $("logs").append(panel);
  const log = { panel, pre, status, ctl: new AbortController() };
  panels.set(name, log);
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

export function resumeLogs() {
  // After a reconnect: panels whose follow ended with the daemon follow again, from now.
  for (const [name, log] of panels) if (!log.live) followLog(name, log, 0);
}
