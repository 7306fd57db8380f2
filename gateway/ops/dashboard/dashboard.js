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
  cell(row, backend.active, "number active");
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
}

function renderCounters(counters) {
  const refused = Object.values(counters.refused).reduce((a, b) => a + b, 0);
  document.getElementById("count-game").textContent = counters.active_sessions.game;
  document.getElementById("count-websocket").textContent = counters.active_sessions.websocket;
  document.getElementById("count-http").textContent = counters.active_sessions.http;
  document.getElementById("count-accepted").textContent = counters.accepted;
  document.getElementById("count-refused").textContent = refused;
  document.getElementById("count-bytes").textContent =
    formatBytes(counters.bytes_in) + " / " + formatBytes(counters.bytes_out);
  document.getElementById("count-unserved").textContent = counters.unserved;
  const rows = Object.entries(counters.refused).map(([reason, count]) => {
    const row = document.createElement("tr");
    cell(row, reason);
    cell(row, count, "number");
    return row;
  });
  replaceRows(document.querySelector("#refusals tbody"), rows);
}

function renderSessions(sessions, total, now) {
  const rows = sessions.map((session) => {
    const row = document.createElement("tr");
    cell(row, session.id, "number");
    cell(row, session.kind);
    cell(row, session.peer);
    cell(row, session.backend);
    cell(row, formatAge(Math.max(0, now - session.started)), "number");
    cell(row, session.bytes_in, "number");
    cell(row, session.bytes_out, "number");
    cell(row, session.worker === undefined ? "" : session.worker, "number");
    return row;
  });
  replaceRows(document.querySelector("#sessions tbody"), rows);
  document.getElementById("sessions-shown").textContent =
    sessions.length < total ? "(the oldest " + sessions.length + " of " + total + ")" : "";
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
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("status.json?limit=" + SESSIONS_SHOWN, { cache: "no-store" });
    if (!response.ok) throw new Error("status.json: " + response.status);
    const status = await response.json();
    renderBackends(status.backends);
    renderCounters(status.counters);
    renderWorkers(status.workers);
    const live = status.counters.active_sessions;
    renderSessions(status.sessions, live.game + live.websocket + live.http, status.now);
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
