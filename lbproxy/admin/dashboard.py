"""The status page served at ``GET /`` on the admin listener: one self-contained HTML document.

No external assets: inline CSS and JavaScript that polls ``/status`` every two seconds, derives
request and error rates from counter deltas, and posts drain/enable/disable actions (asking for
the bearer token once if the admin API wants one).
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lbproxy status</title>
<style>
  :root { --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; --mute:#57606a; --line:#d0d7de; }
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color:#1f2328; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  h2 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
  .meta { color: var(--mute); margin-bottom: 1rem; }
  table { border-collapse: collapse; width: 100%; margin-bottom: .5rem; }
  th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--mute); font-weight: 600; font-size: .85rem; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .state { font-weight: 600; padding: .05rem .45rem; border-radius: 1rem; font-size: .85rem; }
  .healthy { color: #fff; background: var(--ok); }
  .unhealthy, .ejected { color: #fff; background: var(--bad); }
  .draining, .disabled { color: #fff; background: var(--warn); }
  button { font: inherit; font-size: .8rem; margin-right: .3rem; cursor: pointer; }
  #error { color: var(--bad); }
</style>
</head>
<body>
<h1>lbproxy</h1>
<div class="meta"><span id="version"></span> &middot; up <span id="uptime"></span> &middot;
  <span id="ready"></span> &middot; refreshed <span id="refreshed">never</span> <span id="error"></span></div>
<h2>Listeners</h2>
<table id="listeners"><thead><tr><th>name</th><th>mode</th><th>bind</th><th>active connections</th>
  <th>connections</th><th>requests</th><th>routes / pool</th></tr></thead><tbody></tbody></table>
<div id="pools"></div>
<script>
"use strict";
let previous = null, previousAt = 0;
const token = () => sessionStorage.getItem("lbproxy-token");
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node[k] = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function rate(key, value, seconds) {
  if (!previous || !(key in previous) || seconds <= 0) return "-";
  return ((value - previous[key]) / seconds).toFixed(1);
}
async function act(pool, backend, action) {
  const url = `/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(backend)}/${action}`;
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = token() ? {"Authorization": "Bearer " + token()} : {};
    const response = await fetch(url, {method: "POST", headers});
    if (response.status === 401 && attempt === 0) {
      const entered = prompt("Admin token");
      if (!entered) return;
      sessionStorage.setItem("lbproxy-token", entered);
      continue;
    }
    if (!response.ok) document.getElementById("error").textContent = `${action} failed: ${response.status}`;
    break;
  }
  refresh();
}
function render(status, seconds) {
  document.getElementById("version").textContent = "version " + status.version;
  document.getElementById("uptime").textContent = Math.round(status.uptime_seconds) + " s";
  document.getElementById("ready").textContent = status.ready ? "ready" : "NOT READY (shutting down)";
  const counters = {};
  const tbody = document.querySelector("#listeners tbody");
  tbody.replaceChildren(...status.listeners.map(l => el("tr", {},
    el("td", {}, l.name), el("td", {}, l.mode), el("td", {}, l.bind),
    el("td", {class: "num"}, l.connections_active), el("td", {class: "num"}, l.connections_total),
    el("td", {class: "num"}, l.requests_total ?? "-"),
    el("td", {}, l.routes ? l.routes.map(r => `${r.name} \\u2192 ${r.pool}`).join(", ") : l.pool))));
  const pools = document.getElementById("pools");
  pools.replaceChildren(...status.pools.map(pool => {
    const rows = pool.backends.map(b => {
      const key = pool.name + "/" + b.address;
      counters[key + ":n"] = b.connections_total;
      counters[key + ":e"] = b.failures_total + (b.responses_5xx || 0);
      return el("tr", {"data-backend": b.address},
        el("td", {}, b.address),
        el("td", {}, el("span", {class: "state " + b.state}, b.state)),
        el("td", {class: "num"}, b.weight === b.effective_weight ? b.weight : `${b.effective_weight} / ${b.weight}`),
        el("td", {class: "num"}, b.active),
        el("td", {class: "num"}, rate(key + ":n", b.connections_total, seconds)),
        el("td", {class: "num"}, rate(key + ":e", counters[key + ":e"], seconds)),
        el("td", {}, b.last_check && b.last_check.result ? `${b.last_check.result}: ${b.last_check.detail}` : "-"),
        el("td", {},
          el("button", {onclick: () => act(pool.name, b.address, "drain")}, "drain"),
          el("button", {onclick: () => act(pool.name, b.address, "disable")}, "disable"),
          el("button", {onclick: () => act(pool.name, b.address, "enable")}, "enable")));
    });
    return el("section", {class: "pool", "data-pool": pool.name},
      el("h2", {}, `Pool ${pool.name} (${pool.strategy}${pool.health_check ? ", " + pool.health_check + " checks" : ""})`),
      el("table", {}, el("thead", {}, el("tr", {}, ...["backend", "state", "weight", "active", "req/s", "err/s",
        "last check", "actions"].map(h => el("th", {}, h)))), el("tbody", {}, ...rows)));
  }));
  return counters;
}
async function refresh() {
  try {
    const response = await fetch("/status", {cache: "no-store"});
    const status = await response.json();
    const now = performance.now() / 1000;
    const counters = render(status, previous ? now - previousAt : 0);
    previous = counters; previousAt = now;
    document.getElementById("refreshed").textContent = new Date().toLocaleTimeString();
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach /status: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
