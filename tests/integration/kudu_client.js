// Drives the npm package `kudu-api` (a Node client of Kudu's REST API) against
// a webjobs daemon. The client's code is used unchanged; only its base URL
// (hard-wired to https://<site>.scm.azurewebsites.net/) is pointed at the
// daemon. Exits non-zero with the first thing that differs from Kudu.
//
// env: KUDU_URL (http://127.0.0.1:PORT/), KUDU_TOKEN, WORK (a scratch folder
// holding job.zip and run.sh), NODE_PATH (where kudu-api is installed).
"use strict";
const assert = require("assert");
const path = require("path");
const request = require("request");

const defaults = request.defaults;
request.defaults = (options) => defaults.call(request, { ...options, baseUrl: process.env.KUDU_URL });
const kudu = require("kudu-api")({ website: "unused", username: "deploy", password: process.env.KUDU_TOKEN });

// The client's callbacks as promises: resolves with the callback's values after `err`.
const call = (fn, ...args) =>
  new Promise((resolve, reject) => fn(...args, (err, ...rest) => (err ? reject(err) : resolve(rest))));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const work = process.env.WORK;

async function main() {
  const w = kudu.webjobs;
  let [job] = await call(w.uploadTriggered, "greet", path.join(work, "job.zip"));
  assert.strictEqual(job.name, "greet");
  assert.strictEqual(job.type, "triggered");
  assert.strictEqual(job.run_command, "app/run.py");

  // Deployed, then run at once: no sleep between.
  const [run] = await call(w.runTriggered, "greet", `O'Brien "Ada Lovelace" C:\\temp`);
  assert.strictEqual(run.statusCode, 202);
  const location = run.headers.location;
  assert.ok(location.includes("/api/triggeredwebjobs/greet/history/"), location);
  const id = location.split("/").pop();

  let latest;
  for (let i = 0; i < 200; i++) {
    [latest] = await call(w.getTriggeredHistory, "greet", id);
    if (latest.status !== "Running" && latest.status !== "Initializing") break;
    assert.strictEqual(latest.end_time, "0001-01-01T00:00:00");
    await sleep(50);
  }
  assert.strictEqual(latest.status, "Success", JSON.stringify(latest));
  assert.match(latest.duration, /^\d\d:\d\d:\d\d\.\d{7}$/);
  const [history] = await call(w.listTriggeredHistory, "greet");
  assert.strictEqual(history.runs[0].id, id);

  // The run's output through the VFS, as Kudu's clients read it.
  const vfsPath = latest.output_url.split("/vfs/")[1];
  const [output] = await call(kudu.vfs.getFile, vfsPath);
  assert.ok(output.includes(`INFO] ["O'Brien", "Ada Lovelace", "C:\\\\temp"]`), output);
  assert.ok(output.includes(`INFO] O'Brien "Ada Lovelace" C:\\temp`), output);
  const [files] = await call(kudu.vfs.listFiles, `data/jobs/triggered/greet/${id}`);
  assert.ok(files.some((f) => f.name === "output_log.txt" && f.mime.startsWith("text/plain")), JSON.stringify(files));

  const [all] = await call(w.listAll);
  assert.ok(all.some((j) => j.name === "greet"));
  const [triggered] = await call(w.listTriggered);
  assert.strictEqual(triggered.find((j) => j.name === "greet").latest_run.id, id);
  [job] = await call(w.getTriggered, "greet");
  assert.strictEqual(job.latest_run.status, "Success");
  const [swagger] = await call(w.listTriggeredAsSwagger);
  assert.ok(swagger.paths["/api/triggeredjobs/greet/run"].post, JSON.stringify(swagger));

  // A continuous job from one file: upload, settings, stop, start, delete.
  [job] = await call(w.uploadContinuous, "beat", path.join(work, "run.sh"));
  assert.strictEqual(job.name, "beat");
  [job] = await call(w.getContinuous, "beat");
  assert.strictEqual(job.type, "continuous");
  await call(w.setContinuousSettings, "beat", { stopping_wait_time: 3 });
  const [settings] = await call(w.getContinuousSettings, "beat");
  assert.strictEqual(settings.stopping_wait_time, 3);
  await call(w.stopContinuous, "beat");
  [job] = await call(w.getContinuous, "beat");
  assert.strictEqual(job.status, "Stopped");
  await call(w.startContinuous, "beat");
  [job] = await call(w.getContinuous, "beat");
  assert.ok(["Starting", "Running"].includes(job.status), job.status);

  await call(w.deleteContinuous, "beat");
  await call(w.deleteTriggered, "greet");
  await call(w.deleteTriggered, "greet"); // delete if exists: 200 again
  const [after] = await call(w.listAll);
  assert.strictEqual(after.length, 0, JSON.stringify(after));
  console.log("kudu-api: all calls behaved as with Kudu");
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
