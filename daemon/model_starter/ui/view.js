// DOM helpers and the small pictures: the start-duration sparkline and the capacity bars.

export const $ = (id) => document.getElementById(id);

export function fmtSeconds(s) {
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

export function el(tag, props = {}, ...children) {
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

export function chart(name, values) {
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

export const HOLDING = new Set(["starting", "ready", "stopping", "sleeping", "waking"]);

// What a model holds: asleep, its `sleep.requires` (host RAM, say) instead of `requires`.
const holdsOf = (m) => (m.state === "sleeping" && m.sleep ? m.sleep.requires : m.requires) || {};

export function renderCapacity(box, resources, models) {
  // One bar per resource: what each starting, running, sleeping or stopping model holds of it.
  box.replaceChildren();
  for (const [res, cap] of Object.entries(resources)) {
    const holders = models
      .filter((m) => HOLDING.has(m.state) && holdsOf(m)[res] > 0)
      .map((m) => [m.name, holdsOf(m)[res], m.state]);
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

