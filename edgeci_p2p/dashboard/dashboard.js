// The edgeci-p2p dashboard: plain JS and SVG, served by the peer (no CDN).
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const state = { names: {}, chosen: null, filled: false };

function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (TOKEN) headers.Authorization = "Bearer " + TOKEN;
  return fetch(path, Object.assign({}, opts, { headers }));
}

function el(tag, attrs = {}, text = null) {
  const ns = ["svg", "g", "line", "circle", "text", "rect", "title"].includes(tag);
  const e = ns ? document.createElementNS(SVG, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}

const short = (id) => state.names[id] || (id || "").slice(0, 8);
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

// ---- the graph ------------------------------------------------------------------------------

function drawGraph(cluster) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const peers = cluster.peers;
  const cx = 280, cy = 165, r = peers.length > 1 ? 120 : 0;
  const at = {};
  peers.forEach((p, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / peers.length;
    at[p.id] = [cx + r * Math.cos(a), cy + r * Math.sin(a)];
  });
  for (const link of cluster.links) {
    if (!at[link.a] || !at[link.b]) continue;
    const [x1, y1] = at[link.a], [x2, y2] = at[link.b];
    const rate = link.probed_mb_s ?? link.bandwidth_mb_s;
    const label = (rate === null || rate === undefined ? "measuring" : fmt(rate) + " MB/s")
      + " · " + fmt(link.rtt_ms, 2) + " ms";
    const g = el("g", { class: "link", "data-a": link.a, "data-b": link.b });
    g.append(el("line", { x1, y1, x2, y2 }));
    // Labels sit a little off each line's middle, towards the outside of the graph.
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    const lx = mx + (mx - cx) * 0.35, ly = my + (my - cy) * 0.35 + 4;
    g.append(el("text", { x: lx, y: ly, class: "link-label" }, label));
    svg.append(g);
  }
  for (const p of peers) {
    const [x, y] = at[p.id];
    const cls = "peer-node" + (p.alive ? "" : " dead") + (p.self ? " self" : "");
    const g = el("g", { class: cls, "data-id": p.id });
    g.append(el("circle", { cx: x, cy: y, r: 22 }));
    g.append(el("text", { x, y: y + 38 }, p.name));
    g.append(el("title", {}, `${p.name} ${p.id} ${p.address}`));
    svg.append(g);
  }
}

// ---- the cards ------------------------------------------------------------------------------

function drawCards(cluster) {
  const box = document.getElementById("cards");
  box.replaceChildren();
  for (const p of cluster.peers) {
    const load = p.load || {};
    const card = el("div", { class: "card" + (p.alive ? "" : " dead"), "data-id": p.id });
    card.append(el("h3", {}, p.name + (p.self ? " (this page)" : "")));
    const dl = el("dl");
    const rows = [
      ["id", p.id.slice(0, 12)],
      ["address", p.address],
      ["models", Object.keys(p.models || {}).join(", ")],
      ["threads", load.threads ?? "–"],
      ["CPU (quota)", load.cpu_cores === undefined ? "–" : fmt(load.cpu_cores, 2) + " cores"],
      ["speed", fmt(p.speed_gflops, 1) + " GFLOP/s"],
      ["requests", load.requests ?? "–"],
      ["queue", load.queued ?? "–"],
      ["backlog", fmt((p.backlog_s || 0) * 1000, 0) + " ms"],
      ["bans", load.banned ? (load.banned.map(short).join(", ") || "none") : "–"],
      ["alive", p.alive ? "yes" : "no"],
    ];
    for (const [k, v] of rows) {
      dl.append(el("dt", {}, k));
      dl.append(el("dd", {}, String(v)));
    }
    card.append(dl);
    box.append(card);
  }
}

function fillForm(cluster) {
  if (state.filled) return;
  const me = cluster.peers.find((p) => p.self) || cluster.peers[0];
  const models = document.getElementById("model");
  for (const m of Object.keys(me.models || {})) models.append(el("option", { value: m }, m));
  const strategies = document.getElementById("strategy");
  for (const s of cluster.strategies) strategies.append(el("option", { value: s }, s));
  state.filled = true;
}

// ---- timelines ------------------------------------------------------------------------------

// A request's spans per node: measured (filled, by lane) over the plan's prediction
// (dashed outline), on one time axis.
function drawTimeline(svg, trace) {
  svg.replaceChildren();
  if (!trace || !trace.spans || !trace.spans.length) {
    svg.setAttribute("height", 20);
    svg.append(el("text", { x: 4, y: 14 }, "no timeline (request not traced)"));
    return;
  }
  const spans = trace.spans.map(([node, name, start, stop, lane, stage, tile, pred]) =>
    ({ node, name, start, stop, lane, stage, tile, pred }));
  const nodes = [];
  for (const s of spans) if (!nodes.includes(s.node)) nodes.push(s.node);
  let end = 0;
  for (const s of spans) end = Math.max(end, s.stop, s.pred ? s.pred[1] : 0);
  const left = 90, width = 600, row = 34;
  const x = (t) => left + (t / (end || 1)) * (width - left - 10);
  const height = nodes.length * row + 24;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", height);
  nodes.forEach((n, i) => {
    const y = i * row + 4;
    svg.append(el("text", { x: 2, y: y + 16 }, short(n)));
    svg.append(el("line", { x1: left, x2: width - 10, y1: y + row - 4, y2: y + row - 4,
      class: "axis" }));
    const seen = new Set();
    for (const s of spans.filter((s) => s.node === n)) {
      const r = el("rect", { x: x(s.start), y, width: Math.max(1, x(s.stop) - x(s.start)),
        height: 14, class: "span lane-" + s.lane });
      r.append(el("title", {}, `${s.name} ${(1000 * (s.stop - s.start)).toFixed(1)} ms`
        + (s.stage !== null ? ` stage ${s.stage}` : "")));
      svg.append(r);
      if (s.pred && !seen.has(s.pred.join())) {
        seen.add(s.pred.join());
        const p = el("rect", { x: x(s.pred[0]), y: y + 16,
          width: Math.max(1, x(s.pred[1]) - x(s.pred[0])), height: 10, class: "predicted" });
        p.append(el("title", {}, `predicted ${s.name} ${(1000 * (s.pred[1] - s.pred[0])).toFixed(1)} ms`));
        svg.append(p);
      }
    }
  });
  svg.append(el("text", { x: left, y: height - 4 }, "0"));
  svg.append(el("text", { x: width - 10, y: height - 4, "text-anchor": "end" },
    (1000 * end).toFixed(0) + " ms  (filled: measured, dashed: predicted)"));
}

function planText(entry) {
  const plan = entry.plan || {};
  const pred = plan.predicted ? ` (predicted ${(1000 * plan.predicted).toFixed(0)} ms)` : "";
  return (plan.text || "") + pred;
}

// ---- recent requests ------------------------------------------------------------------------

function drawRequests(list) {
  const body = document.getElementById("requests");
  body.replaceChildren();
  for (const r of list) {
    const tr = el("tr", { class: "request" + (r.id === state.chosen ? " chosen" : ""),
      "data-id": r.id });
    const nodes = ((r.plan_nodes || []).map(short)).join(", ");
    const cells = [new Date(r.at * 1000).toLocaleTimeString(), r.id, r.model, r.strategy,
      r.outcome, fmt(r.seconds * 1000, 0), nodes];
    cells.forEach((c, i) => {
      const td = el("td", i === 4 && r.outcome !== "ok" ? { class: "failed" } : {}, String(c));
      tr.append(td);
    });
    tr.addEventListener("click", () => choose(r.id));
    body.append(tr);
  }
}

async function choose(id) {
  state.chosen = id;
  const res = await api("api/requests/" + encodeURIComponent(id));
  if (!res.ok) return;
  const entry = await res.json();
  document.getElementById("selected").hidden = false;
  document.getElementById("selected-title").textContent =
    `${entry.id}: ${entry.outcome}, ${(entry.seconds * 1000).toFixed(0)} ms`;
  document.getElementById("selected-plan").textContent = planText(entry) || entry.error;
  drawTimeline(document.getElementById("selected-timeline"), entry.trace);
  for (const tr of document.querySelectorAll("tr.request")) {
    tr.classList.toggle("chosen", tr.dataset.id === id);
  }
}

// ---- the form -------------------------------------------------------------------------------

async function classify(ev) {
  ev.preventDefault();
  const form = ev.target;
  const button = document.getElementById("submit");
  const error = document.getElementById("result-error");
  button.disabled = true;
  error.hidden = true;
  try {
    const res = await api("api/infer", { method: "POST", body: new FormData(form) });
    const entry = await res.json();
    if (!res.ok) throw new Error(entry.error || res.statusText);
    document.getElementById("result").hidden = false;
    document.getElementById("result-summary").textContent =
      `${entry.id}: ${entry.model} with ${entry.strategy}, ${(entry.seconds * 1000).toFixed(0)} ms`;
    const top = document.getElementById("top5");
    top.replaceChildren();
    for (const t of entry.top5) {
      top.append(el("li", {}, `${t.label} (class ${t.index}) p=${t.prob.toFixed(4)}`));
    }
    document.getElementById("plan").textContent = planText(entry);
    drawTimeline(document.getElementById("result-timeline"), entry.trace);
    refresh();
  } catch (e) {
    error.textContent = "failed: " + e.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

// ---- polling --------------------------------------------------------------------------------

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [c, r] = await Promise.all([api("api/cluster"), api("api/requests")]);
    if (!c.ok || !r.ok) throw new Error(`HTTP ${c.status}/${r.status}`);
    const cluster = await c.json();
    for (const p of cluster.peers) state.names[p.id] = p.name;
    drawGraph(cluster);
    drawCards(cluster);
    fillForm(cluster);
    drawRequests((await r.json()).requests);
    const alive = cluster.peers.filter((p) => p.alive).length;
    status.textContent = `${alive} of ${cluster.peers.length} peers alive · updated `
      + new Date().toLocaleTimeString();
  } catch (e) {
    status.textContent = "cannot reach the peer: " + e.message;
  }
}

document.getElementById("infer").addEventListener("submit", classify);
if (TOKEN) document.getElementById("metrics-link").href = "metrics?token=" + TOKEN;
refresh();
setInterval(refresh, POLL_MS);
