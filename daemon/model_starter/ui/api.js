// The admin API over fetch: the bearer token travels in a header on every call, the SSE
// streams too (EventSource cannot send one; the token is never put in a URL).

const API = "/_ms";
const TOKEN_KEY = "model-starter-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";

export function setToken(value) {
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function hasToken() { return Boolean(token); }

export class HttpError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Unreachable extends Error {}

export async function call(path, opts = {}) {
  // The client header marks a call as meant (the daemon refuses state changes without it).
  const headers = { "X-Model-Starter-Client": "dashboard", ...(opts.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
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

export async function readSSE(resp, onMessage) {
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

