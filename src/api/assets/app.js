// webjobs dashboard: a client of the same HTTP API as the CLI.
// Routes: #/ (jobs), #/job/<type>/<name>, #/run/<job>/<run id>.
"use strict";

const view = document.getElementById("view");
const filter = document.getElementById("filter");
const notice = document.getElementById("notice");
const PAGE = 100;
// A refusal comes back to the page rather than as the browser's login prompt.
const HEADERS = { "X-Webjobs-Dashboard": "1" };
// Bytes of a log shown at first, and loaded by each "load earlier".
const LOG_CHUNK = 64 * 1024;
let listEtag = null;
let listJobs = [];
let timer = null;
let streamAbort = null;
const list = { sort: "name", dir: 1, status: null, page: 0 };
// CPU share and memory per job ("type/name"), from two readings of /api/usage.
let usage = new Map();
let lastUsage = null;

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// Every request goes through here: a failure is said at the top of the page.
async function api(method, path, body, headers) {
  let response;
  try {
    response = await fetch(path, { method, cache: "no-cache", credentials: "same-origin", headers: { ...HEADERS, ...(body ? { "Content-Type": "application/json" } : {}), ...(headers || {}) }, body });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    say(`The daemon cannot be reached (${e.message}). Retrying…`);
    return { status: 0, json: null };
  }
  if (response.status === 401 || response.status === 403) {
    say("Credentials refused: reload the page and log in with any user name and the token in data/api-token as the password (or the configured api_user/api_password).");
  } else if (response.status >= 500) {
    say(`The daemon answered ${response.status} to ${method} ${path}.`);
  } else {
    say(null);
  }
  if (response.status === 304) return { status: 304 };
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  return { status: response.status, json, text, etag: response.headers.get("ETag"), headers: response.headers };
}

function say(text) {
  notice.hidden = !text;
  notice.textContent = text || "";
}

function badge(status) {
  return `<span class="badge ${esc(status)}">${esc(status)}</span>`;
}

// ---------- times ----------

function span(seconds) {
  const s = Math.round(Math.abs(seconds));
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, r = s % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${r}s`;
  return `${r}s`;
}

function relative(iso) {
  const seconds = (new Date(iso) - Date.now()) / 1000;
  if (Math.abs(seconds) < 1) return "now";
  return seconds > 0 ? `in ${span(seconds)}` : `${span(seconds)} ago`;
}

// A time as "5m 2s ago", the absolute local time on hover.
function when(text) {
  if (!text || text.startsWith("0001-")) return "";
  const d = new Date(text);
  if (isNaN(d)) return esc(text);
  return `<time datetime="${esc(text)}" title="${esc(d.toLocaleString())}">${esc(relative(text))}</time>`;
}

// An uptime: how long since.
function since(text) {
  if (!text) return "";
  const d = new Date(text);
  return isNaN(d) ? "" : `<time datetime="${esc(text)}" data-since="1" title="since ${esc(d.toLocaleString())}">${esc(span((Date.now() - d) / 1000))}</time>`;
}

// Relative times move on by themselves.
setInterval(() => {
  for (const t of document.querySelectorAll("time[datetime]")) {
    t.textContent = t.dataset.since ? span((Date.now() - new Date(t.dateTime)) / 1000) : relative(t.dateTime);
  }
}, 5000);

function bytes(n) {
  if (n == null) return "";
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${Math.round(n / 1024)} KiB`;
}

// ---------- job list ----------

async function showList() {
  const r = await api("GET", "/api/webjobs");
  if (r.status === 200) { listJobs = r.json; listEtag = r.etag; renderList(); }
  else if (view.querySelector(".loading")) view.innerHTML = `<p class="error">The job list could not be loaded (${r.status ? `HTTP ${r.status}` : "no answer"}).</p>`;
}

const columns = [
  ["name", "name", (j) => j.name],
  ["type", "type", (j) => j.type],
  ["status", "status", (j) => j.status],
  ["uptime", "uptime", (j) => j.started || ""],
  ["restarts", "restarts", (j) => j.restarts ?? -1],
  ["cpu", "CPU", (j) => usage.get(`${j.type}/${j.name}`)?.cpu ?? -1],
  ["memory", "memory", (j) => usage.get(`${j.type}/${j.name}`)?.memory ?? -1],
  ["next", "next run", (j) => j.next_run || j.next_restart || "~"],
  ["last", "last run", (j) => j.latest_run?.start_time || ""],
];

function visibleJobs() {
  const q = filter.value.trim().toLowerCase();
  let jobs = listJobs;
  if (q) jobs = jobs.filter((j) => j.name.toLowerCase().includes(q) || j.status.toLowerCase().includes(q) || (j.error || "").toLowerCase().includes(q));
  if (list.status) jobs = jobs.filter((j) => j.status === list.status);
  const key = columns.find((c) => c[0] === list.sort)[2];
  const keyed = jobs.map((j) => [key(j), j.name, j]);
  keyed.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0) * list.dir);
  return keyed.map((k) => k[2]);
}

function renderList() {
  const counts = new Map();
  for (const j of listJobs) counts.set(j.status, (counts.get(j.status) || 0) + 1);
  const chips = [`<button class="chip${list.status ? "" : " on"}" data-status="">all ${listJobs.length}</button>`]
    .concat([...counts].sort().map(([s, n]) => `<button class="chip${list.status === s ? " on" : ""}" data-status="${esc(s)}">${badge(s)} ${n}</button>`));
  const jobs = visibleJobs();
  const pages = Math.max(1, Math.ceil(jobs.length / PAGE));
  list.page = Math.min(list.page, pages - 1);
  const first = list.page * PAGE;
  const shown = jobs.slice(first, first + PAGE);
  const rows = shown.map((j) => {
    const key = `${j.type}/${j.name}`;
    const u = usage.get(key);
    const run = j.latest_run;
    const progress = run?.progress?.percent != null && (run.status === "Running" || run.status === "Initializing") ? ` <progress max="100" value="${run.progress.percent}"></progress>` : "";
    const last = run ? `${badge(run.status)} ${when(run.end_time && !run.end_time.startsWith("0001") ? run.end_time : run.start_time)}${progress}` : (j.last_exit ? `<span class="muted">${esc(j.last_exit)}</span>` : "");
    const next = j.next_run ? when(j.next_run) : j.next_restart ? `restart ${when(j.next_restart)}` : "";
    const queued = j.queued ? ` <span class="muted queued">${j.queued} queued</span>` : "";
    return `<tr data-job="${esc(j.name)}" data-type="${esc(j.type)}">
      <td><a href="#/job/${esc(j.type)}/${esc(j.name)}">${esc(j.name)}</a></td>
      <td class="wide">${esc(j.type)}</td><td class="status">${badge(j.status)}</td>
      <td class="wide uptime">${since(j.started)}</td><td class="wide restarts">${j.restarts ?? ""}</td>
      <td class="wide cpu" data-key="${esc(key)}">${u ? `${u.cpu.toFixed(1)}%` : ""}</td><td class="wide memory" data-key="${esc(key)}">${u ? bytes(u.memory) : ""}</td>
      <td>${next}</td><td>${last}${queued}</td>
      <td class="detail muted" title="${esc(j.error || "")}">${esc(j.error || "")}</td></tr>`;
  }).join("");
  const head = columns.map(([key, label]) => `<th class="${["type", "uptime", "restarts", "cpu", "memory"].includes(key) ? "wide" : ""}"><button class="sort${list.sort === key ? " on" : ""}" data-sort="${key}">${label}${list.sort === key ? (list.dir > 0 ? " ▲" : " ▼") : ""}</button></th>`).join("");
  view.innerHTML = `<div id="summary">${chips.join("")}</div>
    <div class="pager"><span id="shown">${jobs.length ? `${first + 1}–${first + shown.length} of ${jobs.length}` : "no jobs"}${jobs.length !== listJobs.length ? ` (${listJobs.length} in all)` : ""}</span>
      <button id="prev" ${list.page ? "" : "disabled"}>‹ previous</button><button id="next" ${list.page + 1 < pages ? "" : "disabled"}>next ›</button></div>
    <div class="scroll"><table id="jobs"><thead><tr>${head}<th>error</th></tr></thead><tbody>${rows}</tbody></table></div>`;
  for (const b of view.querySelectorAll("#summary .chip")) b.onclick = () => { list.status = b.dataset.status || null; list.page = 0; renderList(); };
  for (const b of view.querySelectorAll("button.sort")) b.onclick = () => { list.dir = list.sort === b.dataset.sort ? -list.dir : 1; list.sort = b.dataset.sort; list.page = 0; renderList(); };
  document.getElementById("prev").onclick = () => { list.page--; renderList(); };
  document.getElementById("next").onclick = () => { list.page++; renderList(); };
  if (!performance.getEntriesByName("jobs-rendered").length) performance.mark("jobs-rendered");
}

// CPU share (since the last reading) and memory of each running job.
async function readUsage() {
  const r = await api("GET", "/api/usage");
  if (r.status !== 200) return;
  const next = new Map();
  for (const u of r.json.jobs) {
    const key = `${u.type}/${u.name}`;
    const before = lastUsage?.jobs.get(key);
    const wall = lastUsage ? r.json.time_ms - lastUsage.time : 0;
    const cpu = before && before.pid === u.pid && wall > 0 ? Math.max(0, (u.cpu_ms - before.cpu_ms) * 100 / wall) : 0;
    next.set(key, { cpu, memory: u.memory_bytes, cpu_ms: u.cpu_ms, pid: u.pid });
  }
  lastUsage = { time: r.json.time_ms, jobs: next };
  usage = next;
  for (const td of document.querySelectorAll("td.cpu[data-key], td.memory[data-key], dd.cpu[data-key], dd.memory[data-key]")) {
    const u = usage.get(td.dataset.key);
    td.textContent = !u ? "" : td.classList.contains("cpu") ? `${u.cpu.toFixed(1)}%` : bytes(u.memory);
  }
}

// ---------- one job ----------

async function showJob(type, name) {
  const r = await api("GET", `/api/${type}webjobs/${encodeURIComponent(name)}`);
  if (r.status !== 200) { view.innerHTML = `<p class="error">${esc(r.json?.error || (r.status ? `HTTP ${r.status}` : "the daemon does not answer"))}</p>`; return; }
  const j = r.json;
  const key = `${type}/${name}`;
  const actions = type === "triggered"
    ? `<input id="run-args" placeholder="arguments, e.g. &quot;Ada Lovelace&quot; --fast"><button id="run-button">Run</button><button id="cancel-button">Cancel</button><button id="start-button">Start</button><button id="stop-button">Stop</button>`
    : `<button id="start-button">Start</button><button id="stop-button">Stop</button><button id="restart-button">Restart</button>`;
  view.innerHTML = `<h2>${esc(j.name)} <span class="status" id="job-status">${badge(j.status)}</span></h2>
    <dl><dt>type</dt><dd>${esc(j.type)}</dd><dt>command</dt><dd><code>${esc(j.run_command || "")}</code></dd>
    ${j.schedule ? `<dt>schedule</dt><dd><code>${esc(j.schedule)}</code> next ${when(j.next_run)}</dd>` : ""}
    <dt>process</dt><dd id="process">${processLine(j)}</dd>
    <dt>CPU</dt><dd class="cpu" data-key="${esc(key)}"></dd><dt>memory</dt><dd class="memory" data-key="${esc(key)}"></dd>
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
  readUsage();
  if (type === "triggered") {
    document.getElementById("run-button").onclick = () => runJob(name);
    document.getElementById("cancel-button").onclick = () => act("POST", `/api/triggeredwebjobs/${encodeURIComponent(name)}/cancel`);
    await showHistory(name);
    await showQueue(name);
  } else {
    document.getElementById("restart-button").onclick = () => act("POST", `/api/continuouswebjobs/${encodeURIComponent(name)}/restart`);
    const url = `/vfs/data/jobs/continuous/${encodeURIComponent(name)}/job_log.txt`;
    document.getElementById("detail").innerHTML = `<p><a href="${url}?download=1">download job_log.txt</a></p>${logBox()}`;
    showLog(url, true);
  }
}

// Pid, uptime, restarts and how the last process ended.
function processLine(j) {
  const parts = [];
  if (j.pid) parts.push(`pid ${esc(j.pid)}, up ${since(j.started)}`);
  if (j.restarts != null) parts.push(`${j.restarts} restart${j.restarts === 1 ? "" : "s"}`);
  if (j.last_exit) parts.push(`last ended: ${esc(j.last_exit)}`);
  if (j.next_restart) parts.push(`next restart ${when(j.next_restart)}`);
  return parts.join("; ") || '<span class="muted">not running</span>';
}

// Buttons follow the state: no Stop on a stopped job, no Start on a started
// one, no Cancel without an active run, no Restart unless it runs.
function setButtons(type, j) {
  const stopped = j.status === "Stopped" || j.disabled === true;
  const set = (id, enabled) => { const b = document.getElementById(id); if (b) b.disabled = !enabled; };
  set("start-button", stopped);
  set("stop-button", !stopped);
  set("restart-button", !stopped && j.status !== "Invalid");
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
  const process = document.getElementById("process");
  if (process) process.innerHTML = processLine(r.json);
  setButtons(type, r.json);
  const depth = document.getElementById("queue-depth");
  if (depth) depth.textContent = `${r.json.queued || 0} queued${r.json.queue_age_seconds != null ? `, oldest ${Math.round(r.json.queue_age_seconds)} s` : ""}`;
  if (type === "triggered") { await showHistory(name); await showQueue(name); }
}

// ---------- the event stream ----------

// One stream for the page's life; each event refreshes what the current page
// shows of it (at most once per animation frame and job). Without it (an old
// proxy), the list polls.
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
    else if (parts[0] === "run" && changed.has(`triggered/${parts[1]}`)) await refreshRun(parts[1], parts[2]);
    else if (parts[0] !== "job" && parts[0] !== "run") {
      await refreshList();
      // The daemon serves the list it last rendered and renders a fresh one
      // behind it (at most every 250 ms): one more look shortly after a
      // burst of events shows where it settled.
      clearTimeout(trailing);
      trailing = setTimeout(refreshList, 400);
    }
  });
}
let trailing = null;

async function refreshList() {
  const r = await api("GET", "/api/webjobs");
  if (r.status === 200 && r.etag !== listEtag) { listJobs = r.json; listEtag = r.etag; renderList(); }
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
  const out = document.getElementById("action-result");
  out.textContent = "…";
  const r = await api(method, path);
  out.textContent = r.status && r.status < 300 ? "done" : (r.json?.error || (r.status ? `HTTP ${r.status}` : "no answer"));
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
  const rows = runs.map((run) => {
    const p = run.progress && run.progress.percent != null && !["Success", "Failed", "Aborted", "Cancelled"].includes(run.status) ? ` <progress max="100" value="${run.progress.percent}"></progress>` : "";
    return `<tr data-run="${esc(run.id)}"><td><a href="#/run/${esc(name)}/${esc(run.id)}">${esc(run.id)}</a></td>
    <td>${badge(run.status)}${p}</td><td>${when(run.start_time)}</td><td>${esc(run.duration)}</td>
    <td>${esc(run.exit_code ?? run.signal ?? "")}</td><td class="wide">${esc(run.trigger)}</td><td class="wide">${run.result !== undefined ? `<code>${esc(JSON.stringify(run.result)).slice(0, 80)}</code>` : ""}</td></tr>`;
  }).join("");
  document.getElementById("detail").innerHTML = `<h3>runs</h3><div class="scroll"><table id="history"><thead><tr><th>run</th><th>status</th><th>start</th><th>duration</th><th>exit</th><th class="wide">trigger</th><th class="wide">result</th></tr></thead><tbody>${rows}</tbody></table></div>`;
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
  const detail = document.getElementById("detail");
  detail.querySelector("#queue")?.remove();
  detail.appendChild(section);
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

const FINAL = ["Success", "Failed", "Aborted", "Cancelled"];

async function showRun(name, id) {
  const r = await api("GET", `/api/triggeredwebjobs/${encodeURIComponent(name)}/history/${encodeURIComponent(id)}`);
  if (r.status !== 200) { view.innerHTML = `<p class="error">${esc(r.json?.error || (r.status ? `HTTP ${r.status}` : "the daemon does not answer"))}</p>`; return; }
  const run = r.json;
  view.innerHTML = `<h2><a href="#/job/triggered/${esc(name)}">${esc(name)}</a> run ${esc(id)} <span class="status" id="run-status">${badge(run.status)}</span></h2>
    <p class="muted">trigger: ${esc(run.trigger)}; arguments: <code>${esc(JSON.stringify(run.arguments))}</code>; started ${when(run.start_time)}; <span id="run-duration">${FINAL.includes(run.status) ? `took ${esc(run.duration)}` : "running"}</span></p>
    ${run.error ? `<p class="error">${esc(run.error)}</p>` : ""}
    <div id="run-extras">${runExtras(run)}</div>
    <div class="actions"><a href="${esc(run.output_url)}?download=1">download output_log.txt</a><button id="cancel-button">Cancel</button><span id="action-result" class="muted"></span></div>
    ${logBox()}`;
  document.getElementById("cancel-button").onclick = () => act("POST", `/api/triggeredwebjobs/${encodeURIComponent(name)}/cancel?run=${encodeURIComponent(id)}`);
  const live = !FINAL.includes(run.status);
  document.getElementById("cancel-button").disabled = !live;
  // While it runs, its progress is read every second.
  if (live) timer = setInterval(() => refreshRun(name, id), 1000);
  await showLog(run.output_url, live);
  if (live) {
    clearInterval(timer);
    await refreshRun(name, id);
  }
}

async function refreshRun(name, id) {
  const now = await api("GET", `/api/triggeredwebjobs/${encodeURIComponent(name)}/history/${encodeURIComponent(id)}`);
  if (!now.json || !document.getElementById("run-status")) return;
  document.getElementById("run-extras").innerHTML = runExtras(now.json);
  document.getElementById("run-status").innerHTML = badge(now.json.status);
  const ended = FINAL.includes(now.json.status);
  document.getElementById("cancel-button").disabled = ended;
  if (ended) document.getElementById("run-duration").textContent = `took ${now.json.duration}`;
}

// ---------- logs ----------

function logBox() {
  return `<div class="log"><button id="earlier" hidden>load earlier</button><span id="log-size" class="muted"></span><pre class="output" id="output"></pre></div>`;
}

// Shows the end of a log (the last LOG_CHUNK bytes; "load earlier" adds the
// chunk before), then, when live, what is appended, until the page changes.
async function showLog(url, live) {
  if (streamAbort) streamAbort.abort();
  const controller = new AbortController();
  streamAbort = controller;
  const out = document.getElementById("output");
  const earlier = document.getElementById("earlier");
  let start = 0;
  let end = 0;
  let total = 0;
  try {
    const r = await fetch(url, { credentials: "same-origin", cache: "no-cache", headers: { ...HEADERS, Range: `bytes=-${LOG_CHUNK}` }, signal: controller.signal });
    const range = /bytes (\d+)-(\d+)\/(\d+)/.exec(r.headers.get("Content-Range") || "");
    if (r.status === 206 && range) {
      [start, end, total] = [Number(range[1]), Number(range[2]) + 1, Number(range[3])];
      const text = await r.text();
      // A first line cut by the range is left for "load earlier".
      const cut = start > 0 ? text.indexOf("\n") + 1 : 0;
      start += new TextEncoder().encode(text.slice(0, cut)).length;
      appendLines(out, text.slice(cut), false);
    } else if (r.status === 200) {
      const text = await r.text();
      end = total = new TextEncoder().encode(text).length;
      appendLines(out, text, false);
    } else if (r.status !== 416) {
      say(`The log could not be read (HTTP ${r.status}).`);
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  const size = document.getElementById("log-size");
  const showSize = () => { if (size) size.textContent = start > 0 ? `last ${bytes(end - start)} of ${bytes(end)}` : ""; };
  showSize();
  earlier.hidden = start === 0;
  earlier.onclick = async () => {
    const from = Math.max(0, start - LOG_CHUNK);
    const r = await fetch(url, { credentials: "same-origin", cache: "no-cache", headers: { ...HEADERS, Range: `bytes=${from}-${start - 1}` } });
    if (r.status !== 206) return;
    const text = await r.text();
    const cut = from > 0 ? text.indexOf("\n") + 1 : 0;
    const kept = text.slice(cut);
    start = from + new TextEncoder().encode(text.slice(0, cut)).length;
    const frag = document.createDocumentFragment();
    for (const line of kept.split("\n").filter((l, i, all) => l || i < all.length - 1)) frag.appendChild(renderLine(line));
    out.insertBefore(frag, out.firstChild);
    earlier.hidden = start === 0;
    showSize();
  };
  if (!live) return;
  let pending = "";
  try {
    const response = await fetch(`${url}?follow=1&from=${end || total}`, { credentials: "same-origin", headers: HEADERS, signal: controller.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending = appendLines(out, pending + decoder.decode(value, { stream: true }), true);
      end += value.length;
      showSize();
    }
    if (pending) appendLines(out, `${pending}\n`, true);
  } catch (_) { /* navigation away */ }
}

// Appends the whole lines of `text` to the log; returns the unfinished last one.
function appendLines(out, text, follow) {
  const lines = text.split("\n");
  const rest = lines.pop();
  const frag = document.createDocumentFragment();
  for (const line of lines) frag.appendChild(renderLine(line));
  const atBottom = out.scrollHeight - out.scrollTop - out.clientHeight < 40;
  out.appendChild(frag);
  if (!follow || atBottom) out.scrollTop = out.scrollHeight;
  if (!follow && rest) out.appendChild(renderLine(rest));
  return follow ? rest : "";
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

let usageTimer = null;
async function route() {
  clearInterval(timer);
  clearInterval(usageTimer);
  if (streamAbort) { streamAbort.abort(); streamAbort = null; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  filter.hidden = parts[0] === "job" || parts[0] === "run";
  if (parts[0] === "job" && parts.length === 3) {
    usageTimer = setInterval(readUsage, 2000);
    return showJob(parts[1], parts[2]);
  }
  if (parts[0] === "run" && parts.length === 3) return showRun(parts[1], parts[2]);
  await showList();
  // CPU and memory every 2 s; the list itself through the event stream,
  // or a slow poll when there is none.
  readUsage().then(() => { if (listJobs.length) renderList(); });
  usageTimer = setInterval(readUsage, 2000);
  timer = setInterval(() => { if (!streamLive) refreshList(); }, 3000);
}

filter.addEventListener("input", () => { if (!location.hash.startsWith("#/job") && !location.hash.startsWith("#/run")) { list.page = 0; renderList(); } });
window.addEventListener("hashchange", route);
api("GET", "/health").then((r) => { document.getElementById("instance").textContent = r.json ? `instance ${r.json.instance}` : ""; });
route();
