// The admin dashboard: reads status.json every 2 s and renders it.
// Plain DOM (textContent only, so no name or address is ever parsed as HTML);
// nothing is loaded from anywhere but this admin endpoint.
"use strict";

const REFRESH_MS = 2000;
const SESSIONS_SHOWN = 200;
const TOKEN_KEY = "gateway-admin-token";

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
}

function formatAge(seconds) {
  if (seconds < 60) return Math.floor(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

// An uptime in its two largest units: "42 s", "5 min 3 s", "2 h 5 min", "3 d 4 h".
function formatUptime(seconds) {
  const units = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];
  let left = Math.max(0, Math.floor(seconds));
  const parts = [];
  for (const [name, size] of units) {
    const count = Math.floor(left / size);
    left -= count * size;
    if (count || parts.length) parts.push(count + " " + name);
  }
  return parts.length ? parts.slice(0, 2).join(" ") : "0 s";
}

function formatRate(perSecond) {
  if (Number.isInteger(perSecond)) return String(perSecond);
  if (perSecond >= 10) return String(Math.round(perSecond));
  return perSecond.toFixed(perSecond >= 0.1 ? 1 : 2);
}

// Give each cell of a table's bodies the name of its column (data-label),
// which the narrow layout shows beside the value instead of the header row.
function labelCells(table) {
  const names = [...table.tHead.rows[0].cells].map((th) => th.textContent.trim());
  for (const body of table.tBodies) {
    for (const row of body.rows) {
      [...row.cells]
        .filter((c) => c.tagName === "TD")
        .forEach((c, i) => c.dataset.label = names[i] || "");
    }
  }
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function act(name, action) {
  const result = document.getElementById("action-result");
  const headers = {};
  const token = document.getElementById("token").value;
  if (token) headers["Authorization"] = "Bearer " + token;
  try {
    const response = await fetch(
      "backends/" + encodeURIComponent(name) + "/" + action,
      { method: "POST", headers: headers },
    );
    const body = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? name + ": " + body.backend.state
      : name + ": " + response.status + " " + (body.error || response.statusText);
  } catch (error) {
    result.textContent = name + ": " + error;
  }
  refresh();
}

const BACKEND_COLUMNS = 9;

function backendRow(backend) {
  const row = document.createElement("tr");
  cell(row, backend.name, "name");
  cell(row, backend.endpoint);
  cell(row, backend.state, "state state-" + backend.state);
  cell(row, backend.weight, "number");
  // With a session limit: "active / max-sessions", so a full backend shows.
  const limit = backend.max_sessions || 0;
  cell(row, limit ? backend.active + " / " + limit : backend.active, "number active");
  cell(row, backend.total, "number");
  cell(row, backend.failures, "number");
  cell(row, backend.reason);
  const actions = cell(row, "");
  const action = backend.state === "draining" ? "enable" : "drain";
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = action;
  button.addEventListener("click", () => act(backend.name, action));
  actions.replaceChildren(button);
  return row;
}

// The backends by pool, pools in the order their first backend comes
// (status.json's order); a status without pools has only the game pool's.
function byPool(backends) {
  const pools = new Map();
  for (const backend of backends) {
    const pool = backend.pool || "game";
    if (!pools.has(pool)) pools.set(pool, []);
    pools.get(pool).push(backend);
  }
  return pools;
}

// A heading row: the pool's name, and how many of its backends are up.
function poolHeading(pool, backends) {
  const up = backends.filter((backend) => backend.state === "up").length;
  const row = document.createElement("tr");
  row.className = "pool";
  const heading = document.createElement("th");
  heading.colSpan = BACKEND_COLUMNS;
  heading.scope = "rowgroup";
  const name = document.createElement("span");
  name.className = "pool-name";
  name.textContent = "pool " + pool;
  const count = document.createElement("span");
  count.className = up < backends.length ? "pool-count degraded" : "pool-count";
  count.textContent = up + "/" + backends.length + " up";
  heading.append(name, " ", count);
  row.appendChild(heading);
  return row;
}

function renderBackends(backends) {
  // One row group per pool: its heading, then its backends.
  const groups = [...byPool(backends)].map(([pool, members]) => {
    const body = document.createElement("tbody");
    body.dataset.pool = pool;
    body.append(poolHeading(pool, members), ...members.map(backendRow));
    return body;
  });
  const table = document.getElementById("backends");
  for (const body of [...table.tBodies]) body.remove();
  table.append(...groups);
  labelCells(table);
}

function renderCounters(counters) {
  const refused = totalRefused(counters);
  document.getElementById("count-game").textContent = counters.active_sessions.game;
  document.getElementById("count-websocket").textContent = counters.active_sessions.websocket;
  document.getElementById("count-http").textContent = counters.active_sessions.http;
  document.getElementById("count-accepted").textContent = counters.accepted;
  document.getElementById("count-refused").textContent = refused;
  document.getElementById("count-bytes").textContent =
    formatBytes(counters.bytes_in) + " / " + formatBytes(counters.bytes_out);
  document.getElementById("count-unserved").textContent = counters.unserved;
  renderRefusals(counters.refused);
}

// The reasons that refused something; when none did, one line says so.
function renderRefusals(refused) {
  const table = document.getElementById("refusals");
  const rows = Object.entries(refused)
    .filter(([, count]) => count > 0)
    .map(([reason, count]) => {
      const row = document.createElement("tr");
      cell(row, reason);
      cell(row, count, "number");
      return row;
    });
  table.tHead.hidden = rows.length === 0;
  if (rows.length === 0) {
    const row = document.createElement("tr");
    cell(row, "no refusals", "none muted").colSpan = 2;
    rows.push(row);
  }
  replaceRows(table.tBodies[0], rows);
  labelCells(table);
}

// The rates chart.  status.json has counters only (totals since start), so
// the page keeps a rolling window of them, one sample per poll, and draws
// the rate of each interval between two samples as a step of a line.
const WINDOW_S = 300;
const CHART_W = 300;
const CHART_H = 100;
let samples = [];
let samplesOf = null;

function totalRefused(counters) {
  return Object.values(counters.refused).reduce((a, b) => a + b, 0);
}

function addSample(status) {
  const counters = status.counters;
  const sample = {
    t: status.now,
    sessions: counters.sessions.game + counters.sessions.websocket,
    refused: totalRefused(counters),
  };
  const last = samples[samples.length - 1];
  if (last && sample.t === last.t) return; // the same moment, asked twice
  // Another process (a restart, a hand-over) or counters that went back:
  // the old samples say nothing about the new counters.
  if (
    status.started !== samplesOf ||
    (last && (sample.t < last.t || sample.sessions < last.sessions || sample.refused < last.refused))
  ) {
    samples = [];
    samplesOf = status.started;
  }
  samples.push(sample);
  // Keep the one sample before the window, where its first interval starts.
  while (samples.length > 2 && samples[1].t <= sample.t - WINDOW_S) samples.shift();
}

// 1, 2 or 5 times a power of ten, at least 1 (per second) and above every rate.
function chartTop(highest) {
  let top = 1;
  while (top < highest) {
    top *= String(top)[0] === "2" ? 2.5 : 2;
  }
  return top;
}

function renderRates() {
  const now = samples.length ? samples[samples.length - 1].t : 0;
  const steps = { sessions: [], refused: [] };
  for (let i = 1; i < samples.length; i += 1) {
    const before = samples[i - 1];
    const after = samples[i];
    for (const name of Object.keys(steps)) {
      steps[name].push({
        from: before.t,
        to: after.t,
        rate: (after[name] - before[name]) / (after.t - before.t),
      });
    }
  }
  const top = chartTop(Math.max(0, ...steps.sessions.map((s) => s.rate), ...steps.refused.map((s) => s.rate)));
  const x = (t) => (CHART_W - ((now - t) / WINDOW_S) * CHART_W).toFixed(1);
  const y = (rate) => (CHART_H - (rate / top) * CHART_H).toFixed(1);
  const line = (name) =>
    steps[name].map((s) => x(s.from) + "," + y(s.rate) + " " + x(s.to) + "," + y(s.rate)).join(" ");
  document.getElementById("rate-sessions").setAttribute("points", line("sessions"));
  document.getElementById("rate-refusals").setAttribute("points", line("refused"));
  document.getElementById("rate-scale").textContent = formatRate(top) + "/s";
  const current = (name) => {
    const last = steps[name][steps[name].length - 1];
    return last ? formatRate(last.rate) : "-";
  };
  document.getElementById("rate-sessions-now").textContent = current("sessions");
  document.getElementById("rate-refusals-now").textContent = current("refused");
}

function renderSessions(sessions, total, now) {
  const rows = sessions.map((session) => {
    const row = document.createElement("tr");
    cell(row, session.id, "number");
    cell(row, session.kind);
    cell(row, session.peer);
    cell(row, session.backend);
    cell(row, sessionState(session), "state state-" + (session.state || "none"));
    cell(row, formatAge(Math.max(0, now - session.started)), "number");
    cell(row, session.bytes_in, "number");
    cell(row, session.bytes_out, "number");
    cell(row, session.worker === undefined ? "" : session.worker, "number");
    return row;
  });
  replaceRows(document.querySelector("#sessions tbody"), rows);
  labelCells(document.getElementById("sessions"));
  document.getElementById("sessions-shown").textContent =
    sessions.length < total ? "(the oldest " + sessions.length + " of " + total + ")" : "";
}

// A session's state; a waiting one's with its place: "waiting #3".
function sessionState(session) {
  if (session.state !== "waiting") return session.state;
  return session.position ? "waiting #" + session.position : "waiting";
}

// One row per pool with a waiting room (only when one is open or counted
// something): how many wait of how many may, the longest wait, and how
// the waits ended.
function renderQueues(queues) {
  const entries = Object.entries(queues || {});
  document.getElementById("queues-section").hidden = entries.length === 0;
  const rows = entries.map(([pool, queue]) => {
    const row = document.createElement("tr");
    cell(row, pool, "name");
    cell(row, queue.length + " / " + queue.size, queue.length ? "number waiting" : "number");
    cell(row, queue.length ? formatAge(queue.oldest_wait) : "-", "number");
    cell(row, queue.admitted, "number");
    cell(row, queue.timed_out, "number");
    cell(row, queue.full, "number");
    cell(row, queue.left, "number");
    return row;
  });
  replaceRows(document.querySelector("#queues tbody"), rows);
  labelCells(document.getElementById("queues"));
}

function renderWorkers(workers) {
  // Only with --workers: one row per worker process.
  document.getElementById("workers-section").hidden = !workers;
  if (!workers) return;
  const rows = workers.map((worker) => {
    const row = document.createElement("tr");
    cell(row, worker.worker, "number");
    cell(row, worker.pid === null ? "-" : worker.pid, "number");
    cell(row, worker.responding === false && worker.state === "running" ? "not answering" : worker.state);
    cell(row, worker.sessions === null ? "?" : worker.sessions, "number");
    cell(row, worker.restarts, "number");
    cell(row, worker.lost, "number");
    return row;
  });
  replaceRows(document.querySelector("#workers tbody"), rows);
  labelCells(document.getElementById("workers"));
}

// With --cluster: status.json carries the cluster as this node sees it, and
// the page then asks for scope=cluster, which adds the live nodes.  Hidden
// without a cluster.
let clusterScope = false;

function statusUrl() {
  return "status.json?limit=" + SESSIONS_SHOWN + (clusterScope ? "&scope=cluster" : "");
}

// A node is late once it has missed a heartbeat (they come every ttl/3).
function nodeRow(node, ttl, now) {
  const row = document.createElement("tr");
  if (node.self) row.className = "self";
  const name = cell(row, node.name, "name");
  if (node.self) {
    const mark = document.createElement("span");
    mark.className = "self-mark";
    mark.textContent = "this node";
    name.append(" ", mark);
  }
  cell(row, node.address);
  cell(row, node.sessions, "number");
  const late = node.age > (2 * ttl) / 3;
  cell(row, formatAge(node.age) + " ago", late ? "number late" : "number");
  cell(row, node.started ? formatUptime(now - node.started) : "-", "number");
  return row;
}

function renderCluster(status) {
  const cluster = status.cluster;
  document.getElementById("cluster-section").hidden = !cluster;
  if (!cluster) return;
  document.getElementById("cluster-name").textContent = cluster.name + ", node " + cluster.node;
  const redis = document.getElementById("cluster-redis");
  redis.textContent = cluster.redis_up ? "up" : "down";
  redis.className = "redis " + (cluster.redis_up ? "up" : "down");
  document.getElementById("cluster-url").textContent = cluster.redis;
  document.getElementById("cluster-failures").textContent = cluster.failures;
  document.getElementById("cluster-local").textContent = cluster.local_admissions;
  document.getElementById("cluster-alone").hidden = !cluster.limits_alone;
  // Redis away: the list is the one read before it went.
  document.getElementById("cluster-stale").hidden = cluster.redis_up;
  if (!status.nodes) return; // the first poll, before scope=cluster
  const rows = status.nodes.map((node) => nodeRow(node, cluster.ttl, status.now));
  if (rows.length === 0) {
    const row = document.createElement("tr");
    cell(row, "no node listed yet", "none muted").colSpan = 5;
    rows.push(row);
  }
  replaceRows(document.querySelector("#cluster-nodes tbody"), rows);
  labelCells(document.getElementById("cluster-nodes"));
}

// status.json, with the cluster's nodes when this node is in one: the
// first answer tells whether it is (then asked again at once with
// scope=cluster); a 400 to scope=cluster (the gateway restarted without
// --cluster) asks again without.
async function readStatus() {
  for (let attempt = 0; attempt < 2; attempt += 1) {
    const asked = clusterScope;
    const response = await fetch(statusUrl(), { cache: "no-store" });
    if (asked && response.status === 400) {
      clusterScope = false;
      continue;
    }
    if (!response.ok) throw new Error("status.json: " + response.status);
    const status = await response.json();
    clusterScope = Boolean(status.cluster);
    if (clusterScope && !asked && attempt === 0) continue;
    return status;
  }
  throw new Error("status.json: the cluster's scope changed twice");
}

// Which gateway this is, and for how long it has run.
function renderAbout(status) {
  document.getElementById("version").textContent = status.version ? "v" + status.version : "";
  document.getElementById("host").textContent = status.host || "-";
  document.getElementById("uptime").textContent = formatUptime(status.now - status.started);
  document.title = "gateway on " + (status.host || "?");
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const status = await readStatus();
    renderBackends(status.backends);
    renderCounters(status.counters);
    renderWorkers(status.workers);
    renderQueues(status.counters.queues);
    renderCluster(status);
    const live = status.counters.active_sessions;
    renderSessions(status.sessions, live.game + live.websocket + live.http, status.now);
    addSample(status);
    renderRates();
    renderAbout(status);
    document.getElementById("updated").textContent =
      "updated " + new Date(status.now * 1000).toLocaleTimeString();
    error.hidden = true;
  } catch (failure) {
    error.textContent = "cannot read the gateway's status: " + failure.message;
    error.hidden = false;
  }
}

function start() {
  const token = document.getElementById("token");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, token.value));
  document.getElementById("token-form").addEventListener("submit", (e) => e.preventDefault());
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
