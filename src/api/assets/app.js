// webjobs dashboard: a client of the same HTTP API as the CLI.
// Routes: #/ (jobs), #/job/<type>/<name>, #/run/<job>/<run id>.
"use strict";

const view = document.getElementById("view");
const filter = document.getElementById("filter");
let listEtag = null;
let listJobs = [];
let timer = null;
let streamAbort = null;

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function api(method, path, body) {
  const response = await fetch(path, { method, cache: "no-cache", credentials: "same-origin", headers: body ? { "Content-Type": "application/json" } : {}, body });
  if (response.status === 304) return { status: 304 };
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  return { status: response.status, json, etag: response.headers.get("ETag"), location: response.headers.get("Location") };
}

function badge(status) {
  return `<span class="badge ${esc(status)}">${esc(status)}</span>`;
}

function when(text) {
  if (!text) return "";
  const d = new Date(text);
  return isNaN(d) ? esc(text) : esc(d.toLocaleString());
}

// ---------- job list ----------

async function showList() {
  const r = await api("GET", "/api/webjobs");
  if (r.status === 200) { listJobs = r.json; listEtag = r.etag; }
  renderList();
}

function renderList() {
  const q = filter.value.trim().toLowerCase();
  const jobs = q ? listJobs.filter((j) => j.name.toLowerCase().includes(q) || j.status.toLowerCase().includes(q)) : listJobs;
  const rows = jobs.map((j) => {
    const last = j.latest_run ? `${badge(j.latest_run.status)} <span class="muted">${when(j.latest_run.start_time)}</span>` : "";
    const queued = j.queued ? ` <span class="muted queued">${j.queued} queued</span>` : "";
    return `<tr data-job="${esc(j.name)}" data-type="${esc(j.type)}">
      <td><a href="#/job/${esc(j.type)}/${esc(j.name)}">${esc(j.name)}</a></td>
      <td>${esc(j.type)}</td><td class="status">${badge(j.status)}</td>
      <td><code>${esc(j.schedule || "")}</code></td><td>${when(j.next_run)}</td><td>${last}${queued}</td>
      <td class="muted">${esc(j.error || "")}</td></tr>`;
  }).join("");
  view.innerHTML = `<p class="muted">${jobs.length} of ${listJobs.length} jobs</p>
    <table id="jobs"><thead><tr><th>name</th><th>type</th><th>status</th><th>schedule</th><th>next run</th><th>last run</th><th>error</th></tr></thead>
    <tbody>${rows}</tbody></table>`;
  if (!performance.getEntriesByName("jobs-rendered").length) performance.mark("jobs-rendered");
}

// ---------- one job ----------

async function showJob(type, name) {
  const r = await api("GET", `/api/${type}webjobs/${encodeURIComponent(name)}`);
  if (r.status !== 200) { view.innerHTML = `<p class="error">${esc(r.json?.error || "not found")}</p>`; return; }
  const j = r.json;
  const actions = type === "triggered"
    ? `<input id="run-args" placeholder="arguments, e.g. &quot;Ada Lovelace&quot; --fast"><button id="run-button">Run</button><button id="cancel-button">Cancel</button><button id="start-button">Start</button><button id="stop-button">Stop</button>`
    : `<button id="start-button">Start</button><button id="stop-button">Stop</button>`;
  view.innerHTML = `<h2>${esc(j.name)} <span class="status" id="job-status">${badge(j.status)}</span></h2>
    <dl><dt>type</dt><dd>${esc(j.type)}</dd><dt>command</dt><dd><code>${esc(j.run_command || "")}</code></dd>
    ${j.schedule ? `<dt>schedule</dt><dd><code>${esc(j.schedule)}</code> next ${when(j.next_run)}</dd>` : ""}
    ${j.detailed_status ? `<dt>instances</dt><dd>${esc(j.detailed_status)}</dd>` : ""}
    ${type === "triggered" ? `<dt>queue</dt><dd id="queue-depth">${j.queued || 0} queued${j.queue_age_seconds != null ? `, oldest ${Math.round(j.queue_age_seconds)} s` : ""}</dd>` : ""}
    <dt>settings</dt><dd><code>${esc(JSON.stringify(j.settings))}</code></dd></dl>
    ${j.error ? `<p class="error">${esc(j.error)}</p>` : ""}
    ${(j.warnings || []).map((w) => `<p class="warn">${esc(w)}</p>`).join("")}
    <div class="actions">${actions}<span id="action-result" class="muted"></span></div>
    <div id="detail"></div>`;
  document.getElementById("start-button").onclick = () => act("POST", `/api/${type}webjobs/${encodeURIComponent(name)}/start`);
  document.getElementById("stop-button").onclick = () => act("POST", `/api/${type}webjobs/${encodeURIComponent(name)}/stop`);
  setButtons(type, j);
  if (type === "triggered") {
    document.getElementById("run-button").onclick = () => runJob(name);
    document.getElementById("cancel-button").onclick = () => act("POST", `/api/triggeredwebjobs/${encodeURIComponent(name)}/cancel`);
    await showHistory(name);
    await showQueue(name);
  } else {
    const url = `/vfs/data/jobs/continuous/${encodeURIComponent(name)}/job_log.txt`;
    document.getElementById("detail").innerHTML = `<p><a href="${url}?download=1">download job_log.txt</a></p><pre class="output" id="output"></pre>`;
    follow(url, true);
  }
}

// Buttons follow the state: no Stop on a stopped job, no Start on a started
// one, no Cancel without an active run.
function setButtons(type, j) {
  const stopped = j.status === "Stopped" || j.disabled === true;
  const set = (id, enabled) => { const b = document.getElementById(id); if (b) b.disabled = !enabled; };
  set("start-button", stopped);
  set("stop-button", !stopped);
  if (type === "triggered") {
    const running = j.latest_run && (j.latest_run.status === "Running" || j.latest_run.status === "Initializing");
    set("cancel-button", !!running);
    set("run-button", !stopped);
  }
}

// The job page as the job changes (told by the event stream): status,
// buttons, history and queue, without reloading the page or its log.
async function refreshJob(type, name) {
  const r = await api("GET", `/api/${type}webjobs/${encodeURIComponent(name)}`);
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (r.status !== 200 || parts[0] !== "job" || parts[1] !== type || parts[2] !== name) return;
  const status = document.getElementById("job-status");
  if (status) status.innerHTML = badge(r.json.status);
  setButtons(type, r.json);
  const depth = document.getElementById("queue-depth");
  if (depth) depth.textContent = `${r.json.queued || 0} queued${r.json.queue_age_seconds != null ? `, oldest ${Math.round(r.json.queue_age_seconds)} s` : ""}`;
  if (type === "triggered") { await showHistory(name); await showQueue(name); }
}

// ---------- the event stream ----------

// One stream for the page's life; each event refreshes what the current page
// shows of it (at most once per animation frame and job). Without it (an old
// proxy), the list polls as before.
let streamLive = false;
const dirty = new Set();
function onEvent(event) {
  let e;
  try { e = JSON.parse(event.data); } catch (_) { return; }
  dirty.add(`${e.job_type}/${e.job}`);
  requestAnimationFrame(async () => {
    if (!dirty.size) return;
    const changed = new Set(dirty);
    dirty.clear();
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] === "job" && changed.has(`${parts[1]}/${parts[2]}`)) await refreshJob(parts[1], parts[2]);
    else if (parts[0] !== "job" && parts[0] !== "run") {
      const r = await api("GET", "/api/webjobs");
      if (r.status === 200 && r.etag !== listEtag) { listJobs = r.json; listEtag = r.etag; renderList(); }
    }
  });
}
if (window.EventSource) {
  const stream = new EventSource("/api/events");
  stream.onopen = () => { streamLive = true; document.body.dataset.live = "1"; };
  stream.onerror = () => { streamLive = false; delete document.body.dataset.live; };
  for (const type of ["job.status", "job.invalid", "job.recovered", "job.crash_loop", "run.queued", "run.started", "run.ended", "run.retry", "run.dead"]) {
    stream.addEventListener(type, onEvent);
  }
}

async function act(method, path) {
  const r = await api(method, path);
  document.getElementById("action-result").textContent = r.status < 300 ? "done" : (r.json?.error || `HTTP ${r.status}`);
}

async function runJob(name) {
  const args = document.getElementById("run-args").value;
  const query = args.trim() ? `?arguments=${encodeURIComponent(args)}` : "";
  const r = await api("POST", `/api/triggeredwebjobs/${encodeURIComponent(name)}/run${query}`);
  const out = document.getElementById("action-result");
  if (r.status === 202 && r.json?.id) { location.hash = `#/run/${encodeURIComponent(name)}/${r.json.id}`; return; }
  out.textContent = r.status === 202 ? "queued" : (r.json?.error || `HTTP ${r.status}`);
}

async function showHistory(name) {
  const r = await api("GET", `/api/triggeredwebjobs/${encodeURIComponent(name)}/history`);
  const runs = r.json?.runs || [];
  const rows = runs.map((run) => `<tr data-run="${esc(run.id)}"><td><a href="#/run/${esc(name)}/${esc(run.id)}">${esc(run.id)}</a></td>
    <td>${badge(run.status)}</td><td>${when(run.start_time)}</td><td>${esc(run.duration)}</td>
    <td>${esc(run.exit_code ?? run.signal ?? "")}</td><td>${esc(run.trigger)}</td></tr>`).join("");
  document.getElementById("detail").innerHTML = `<h3>runs</h3><table id="history"><thead><tr><th>run</th><th>status</th><th>start</th><th>duration</th><th>exit</th><th>trigger</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// The job's queued and dead requests; a dead one can be queued again.
async function showQueue(name) {
  const base = `/api/triggeredwebjobs/${encodeURIComponent(name)}`;
  const [queued, dead] = await Promise.all([api("GET", `${base}/queue?limit=50`), api("GET", `${base}/dead`)]);
  const row = (q) => `<tr data-request="${esc(q.id)}"><td><code>${esc(q.id)}</code></td><td>${esc(q.priority)}</td><td>${when(q.queued_at)}</td><td>${q.due ? when(q.due) : ""}</td><td>${esc(q.trigger)}</td></tr>`;
  const deadRow = (q) => `<tr data-dead="${esc(q.id)}"><td><code>${esc(q.id)}</code></td><td>${esc(q.attempts)}</td><td>${esc((q.runs || []).slice(-1)[0] || "")}</td><td>${esc(q.error || "")}</td><td><button class="retry" data-id="${esc(q.id)}">Retry</button></td></tr>`;
  const section = document.createElement("div");
  section.id = "queue";
  const requests = queued.json?.requests || [];
  const deadRequests = dead.json?.requests || [];
  section.innerHTML = (requests.length ? `<h3>queued</h3><table id="queued"><thead><tr><th>request</th><th>priority</th><th>queued</th><th>due</th><th>trigger</th></tr></thead><tbody>${requests.map(row).join("")}</tbody></table>` : "")
    + (deadRequests.length ? `<h3>dead</h3><table id="dead"><thead><tr><th>request</th><th>attempts</th><th>last run</th><th>error</th><th></th></tr></thead><tbody>${deadRequests.map(deadRow).join("")}</tbody></table>` : "");
  document.getElementById("detail").appendChild(section);
  for (const b of section.querySelectorAll("button.retry")) {
    b.onclick = () => act("POST", `${base}/dead/${encodeURIComponent(b.dataset.id)}/retry`);
  }
}

// A run's progress and result, as it reports them.
function runExtras(run) {
  const p = run.progress;
  const progress = p ? `<div id="progress"><progress max="100" value="${p.percent ?? ""}"></progress> <span>${p.percent != null ? `${p.percent}%` : ""} ${esc(p.message || "")}</span></div>` : "";
  const result = run.result !== undefined ? `<h3>result</h3><pre id="result">${esc(JSON.stringify(run.result, null, 2))}</pre>` : "";
  const resultError = run.result_error ? `<p class="warn">${esc(run.result_error)}</p>` : "";
  const ids = [run.request ? `request <code>${esc(run.request)}</code>` : "", run.attempt ? `attempt ${esc(run.attempt)}` : "", run.correlation_id ? `correlation id <code>${esc(run.correlation_id)}</code>` : ""].filter(Boolean).join("; ");
  const parent = run.parent ? `<p class="muted" id="chain-parent">started by <a href="#/run/${esc(run.parent.job)}/${esc(run.parent.run)}">${esc(run.parent.job)} run ${esc(run.parent.run)}</a></p>` : "";
  const children = (run.children || []).length ? `<p class="muted" id="chain-children">then started: ${run.children.map((c) => `<a href="#/job/triggered/${esc(c.job)}">${esc(c.job)}</a> <code>${esc(c.request)}</code>`).join(", ")}</p>` : "";
  return `${ids ? `<p class="muted">${ids}</p>` : ""}${parent}${children}${progress}${result}${resultError}`;
}

// ---------- one run ----------

async function showRun(name, id) {
  const r = await api("GET", `/api/triggeredwebjobs/${encodeURIComponent(name)}/history/${encodeURIComponent(id)}`);
  if (r.status !== 200) { view.innerHTML = `<p class="error">${esc(r.json?.error || "not found")}</p>`; return; }
  const run = r.json;
  view.innerHTML = `<h2><a href="#/job/triggered/${esc(name)}">${esc(name)}</a> run ${esc(id)} <span class="status" id="run-status">${badge(run.status)}</span></h2>
    <p class="muted">trigger: ${esc(run.trigger)}; arguments: <code>${esc(JSON.stringify(run.arguments))}</code></p>
    ${run.error ? `<p class="error">${esc(run.error)}</p>` : ""}
    <div id="run-extras">${runExtras(run)}</div>
    <div class="actions"><a href="${esc(run.output_url)}?download=1">download output_log.txt</a><button id="cancel-button">Cancel</button><span id="action-result" class="muted"></span></div>
    <pre class="output" id="output"></pre>`;
  document.getElementById("cancel-button").onclick = () => act("POST", `/api/triggeredwebjobs/${encodeURIComponent(name)}/cancel?run=${encodeURIComponent(id)}`);
  const live = run.status === "Running" || run.status === "Initializing";
  const runUrl = `/api/triggeredwebjobs/${encodeURIComponent(name)}/history/${encodeURIComponent(id)}`;
  const refresh = async () => {
    const now = await api("GET", runUrl);
    const extras = document.getElementById("run-extras");
    if (extras && now.json) extras.innerHTML = runExtras(now.json);
    const status = document.getElementById("run-status");
    if (status && now.json) status.innerHTML = badge(now.json.status);
  };
  // While it runs, its progress is read every second.
  if (live) timer = setInterval(refresh, 1000);
  await follow(run.output_url, live);
  if (live) {
    clearInterval(timer);
    await refresh();
  }
}

// Streams a log into #output; stdout, stderr and the daemon's lines are told apart.
async function follow(url, live) {
  if (streamAbort) streamAbort.abort();
  const controller = new AbortController();
  streamAbort = controller;
  const out = document.getElementById("output");
  let pending = "";
  const append = (text) => {
    pending += text;
    const lines = pending.split("\n");
    pending = lines.pop();
    const frag = document.createDocumentFragment();
    for (const line of lines) frag.appendChild(renderLine(line));
    out.appendChild(frag);
    out.scrollTop = out.scrollHeight;
  };
  try {
    const response = await fetch(live ? `${url}?follow=1` : url, { credentials: "same-origin", signal: controller.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      append(decoder.decode(value, { stream: true }));
    }
    if (pending) append("\n");
  } catch (_) { /* navigation away */ }
}

function renderLine(line) {
  const div = document.createElement("div");
  const m = /^\[([^\]>]+) > ([^:]+): (SYS INFO|SYS WARN|SYS ERROR|INFO|ERROR)\] (.*)$/.exec(line);
  if (!m) { div.className = "line"; div.textContent = line; return div; }
  div.className = "line " + (m[3].startsWith("SYS") ? "sys" : m[3] === "ERROR" ? "err" : "out");
  div.dataset.level = m[3];
  const ts = document.createElement("span");
  ts.className = "ts";
  ts.textContent = `${m[1]} ${m[3].padEnd(9)} `;
  div.appendChild(ts);
  div.appendChild(document.createTextNode(m[4]));
  return div;
}

// ---------- routing ----------

async function route() {
  clearInterval(timer);
  if (streamAbort) { streamAbort.abort(); streamAbort = null; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "job" && parts.length === 3) return showJob(parts[1], parts[2]);
  if (parts[0] === "run" && parts.length === 3) return showRun(parts[1], parts[2]);
  await showList();
  // Live through the event stream; a slow poll stays as a fallback.
  timer = setInterval(async () => {
    if (streamLive) return;
    const r = await api("GET", "/api/webjobs");
    if (r.status === 200 && r.etag !== listEtag) { listJobs = r.json; listEtag = r.etag; renderList(); }
  }, 3000);
}

filter.addEventListener("input", () => { if (!location.hash.startsWith("#/job") && !location.hash.startsWith("#/run")) renderList(); });
window.addEventListener("hashchange", route);
api("GET", "/health").then((r) => { document.getElementById("instance").textContent = r.json ? `instance ${r.json.instance}` : ""; });
route();
