//! WebJobs (Kudu) fidelity, written from Kudu's source: JSON types its C#
//! client can read, the raw `arguments` string, the older route aliases, the
//! swagger document, the VFS, the continuous job passthrough, and writes that
//! are applied before the answer (deploy, then run, with no sleep).

use std::time::Duration;

use serde_json::Value;

use crate::helper::*;

/// Kudu's types for the fields of a job and of a run (`S` string, `N` string
/// or null, `B` bool, `O` object, `R` run object or null).
const JOB_FIELDS: [(&str, char); 8] = [
    ("name", 'S'),
    ("run_command", 'S'),
    ("url", 'S'),
    ("extra_info_url", 'S'),
    ("type", 'S'),
    ("error", 'N'),
    ("using_sdk", 'B'),
    ("settings", 'O'),
];
const RUN_FIELDS: [(&str, char); 11] = [
    ("id", 'S'),
    ("name", 'S'),
    ("status", 'S'),
    ("start_time", 'S'),
    ("end_time", 'S'),
    ("duration", 'S'),
    ("output_url", 'S'),
    ("error_url", 'N'),
    ("url", 'S'),
    ("job_name", 'S'),
    ("trigger", 'S'),
];

fn assert_types(v: &Value, fields: &[(&str, char)]) {
    for (field, kind) in fields {
        let value = v.get(*field).unwrap_or_else(|| panic!("missing {field} in {v}"));
        let ok = match kind {
            'S' => value.is_string(),
            'N' => value.is_string() || value.is_null(),
            'B' => value.is_boolean(),
            'O' => value.is_object(),
            _ => unreachable!(),
        };
        assert!(ok, "{field} has the wrong JSON type for Kudu's client ({kind}): {value} in {v}");
    }
}

const ECHO_ARGS: &str =
    "import json, os, sys\nprint(json.dumps(sys.argv[1:]))\nprint(os.environ['WEBJOBS_COMMAND_ARGUMENTS'])\n";

#[test]
fn json_values_have_kudus_types_while_running_and_after() {
    let root = Root::new();
    root.job("triggered", "slow", &[("inner/run.sh", "echo started\nsleep 30\n")]);
    root.continuous("svc", "exec sleep 300\n");
    std::fs::create_dir_all(root.data_dir("continuous", "svc")).unwrap();
    std::fs::write(root.data_dir("continuous", "svc").join("webjobssdk.marker"), "").unwrap();
    let daemon = root.start();
    let http = root.http();
    let base = format!("http://{}", http.addr);
    let run = http.post("/api/triggeredwebjobs/slow/run");
    assert_eq!(run.status, 202);
    let job = http.get("/api/triggeredwebjobs/slow").json();
    assert_types(&job, &JOB_FIELDS);
    assert_eq!(job["run_command"], "inner/run.sh", "relative to the job folder");
    assert_eq!(job["extra_info_url"], format!("{base}/#/job/triggered/slow"));
    assert!(job["history_url"].is_string() && job["scheduler_logs_url"].is_string(), "{job}");
    let latest = &job["latest_run"];
    assert_types(latest, &RUN_FIELDS);
    assert_eq!(latest["status"], "Running");
    assert_eq!(latest["end_time"], "0001-01-01T00:00:00", "Kudu's DateTime default, never null");
    for list in ["/api/webjobs", "/api/triggeredwebjobs", "/api/continuouswebjobs"] {
        for j in http.get(list).json().as_array().unwrap() {
            assert_types(j, &JOB_FIELDS);
        }
    }
    let svc = http.get("/api/continuouswebjobs/svc").json();
    assert_eq!(svc["using_sdk"], true, "webjobssdk.marker in the data folder");
    assert_eq!(http.get("/api/triggeredwebjobs/slow").json()["using_sdk"], false);
    assert_eq!(http.post("/api/triggeredwebjobs/slow/cancel").status, 200);
    let history = http.get("/api/triggeredwebjobs/slow/history").json();
    let ended = &history["runs"][0];
    assert_types(ended, &RUN_FIELDS);
    assert!(ended["end_time"].as_str().unwrap().starts_with("20"), "{ended}");
    daemon.stop();
}

#[test]
fn arguments_are_kudus_raw_string() {
    let root = Root::new();
    root.job("triggered", "echo", &[("run.py", ECHO_ARGS)]);
    let daemon = root.start();
    let http = root.http();
    // O'Brien "C:\temp\x" "Ada Lovelace": apostrophes and backslashes are ordinary characters.
    let raw = r#"O'Brien C:\temp\x "Ada Lovelace""#;
    let query: String = raw.bytes().map(|b| format!("%{b:02X}")).collect();
    let run = http.post(&format!("/api/triggeredwebjobs/echo/run?arguments={query}"));
    assert_eq!(run.status, 202, "{}", run.text());
    let id = run.json()["id"].as_str().unwrap().to_string();
    let done = http.get(&format!("/api/triggeredwebjobs/echo/history/{id}?wait=20")).json();
    assert_eq!(done["status"], "Success", "{done}");
    let lines = output_lines(&root.run_log("echo", &id), "INFO");
    let argv: Vec<String> = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(argv, ["O'Brien", r"C:\temp\x", "Ada Lovelace"]);
    assert_eq!(lines[1], raw, "WEBJOBS_COMMAND_ARGUMENTS is the string as given");
    daemon.stop();
}

#[test]
fn a_deploy_is_loaded_before_the_answer() {
    let root = Root::new();
    let daemon = root.start();
    let http = root.http();
    let zip = make_zip(root.path(), &[("app/run.py", "print('deployed v1')\n")]);
    for round in 0..3 {
        let job = format!("fresh{round}");
        let put = http.send(
            "PUT",
            &format!("/api/triggeredwebjobs/{job}"),
            &[("Content-Type", "application/zip"), ("Content-Disposition", "attachment; filename=app.zip")],
            &zip,
        );
        assert_eq!(put.status, 200, "{}", put.text());
        assert_eq!(put.json()["run_command"], "app/run.py");
        // No sleep: the daemon knows the job when the deploy is answered.
        assert_eq!(http.get(&format!("/api/triggeredwebjobs/{job}")).status, 200);
        let run = http.post(&format!("/api/triggeredwebjobs/{job}/run"));
        assert_eq!(run.status, 202, "round {round}: {}", run.text());
        let id = run.json()["id"].as_str().unwrap().to_string();
        let done = http.get(&format!("/api/triggeredwebjobs/{job}/history/{id}?wait=20")).json();
        assert_eq!(done["status"], "Success");
    }
    // Settings: the new schedule is in force at once.
    let put = http.send("PUT", "/api/triggeredwebjobs/fresh0/settings", &[], br#"{"schedule": "0 0 4 * * *"}"#);
    assert_eq!(put.status, 200, "{}", put.text());
    let job = http.get("/api/triggeredwebjobs/fresh0").json();
    assert_eq!(job["settings"]["schedule"], "0 0 4 * * *");
    assert!(job["next_run"].as_str().unwrap().contains("T04:00:00"), "{job}");
    // Delete: gone at once; deleting what is not there is fine ("delete if exists").
    assert_eq!(http.send("DELETE", "/api/triggeredwebjobs/fresh1", &[], b"").status, 200);
    assert_eq!(http.get("/api/triggeredwebjobs/fresh1").status, 404);
    assert_eq!(http.post("/api/triggeredwebjobs/fresh1/run").status, 404);
    let again = http.send("DELETE", "/api/triggeredwebjobs/fresh1", &[], b"");
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["deleted"], false);
    assert_eq!(http.send("DELETE", "/api/continuouswebjobs/never-was", &[], b"").status, 200);
    daemon.stop();
}

#[test]
fn start_and_stop_answer_once_done_for_both_kinds() {
    let root = Root::new();
    root.continuous("svc", "trap 'exit 0' TERM\nwhile true; do sleep 0.1; done\n");
    root.job("triggered", "tick", &[("run.sh", "echo tick\n"), ("settings.job", r#"{"schedule": "0 0 5 * * *"}"#)]);
    let daemon = root.start();
    wait_for("svc running", Duration::from_secs(10), || root.status_is("svc", "Running"));
    let http = root.http();
    let pid = root.status("svc")["Pid"].as_i64().unwrap() as i32;
    let stop = http.post("/api/continuouswebjobs/svc/stop");
    assert_eq!(stop.status, 200);
    assert_eq!(stop.json()["status"], "Stopped");
    assert!(!alive(pid), "the process is gone when the stop is answered");
    assert_eq!(http.get("/api/continuouswebjobs/svc").json()["status"], "Stopped");
    let start = http.post("/api/continuouswebjobs/svc/start");
    assert_eq!(start.json()["status"], "Running", "{}", start.text());

    // A triggered job with disable.job: schedule paused, runs refused (409 / exit 4), shown as Stopped.
    let out = root.cli(&["stop", "tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(root.job_dir("triggered", "tick").join("disable.job").exists());
    let job = http.get("/api/triggeredwebjobs/tick").json();
    assert_eq!(job["status"], "Stopped");
    assert!(job["next_run"].is_null(), "the schedule is paused: {job}");
    let refused = http.post("/api/triggeredwebjobs/tick/run");
    assert_eq!(refused.status, 409);
    assert!(refused.json()["error"].as_str().unwrap().contains("disable.job"), "{}", refused.text());
    let out = root.cli(&["run", "tick"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("webjobs start tick"), "{}", stderr(&out));
    let list = stdout(&root.cli(&["list"]));
    assert!(list.lines().any(|l| l.starts_with("tick") && l.contains("Stopped")), "{list}");
    let out = root.cli(&["start", "tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(http.get("/api/triggeredwebjobs/tick").json()["next_run"].as_str().unwrap().contains("T05:00:00"));
    assert_eq!(http.post("/api/triggeredwebjobs/tick/run").status, 202);
    // disable.job written by hand is honoured too (through the watcher).
    std::fs::write(root.job_dir("triggered", "tick").join("disable.job"), "").unwrap();
    wait_for("the hand-written disable.job", Duration::from_secs(10), || {
        http.get("/api/triggeredwebjobs/tick").json()["next_run"].is_null()
    });
    daemon.stop();
}

#[test]
fn kudus_older_routes_and_swagger_answer() {
    let root = Root::new();
    root.job("triggered", "rep", &[("run.sh", "echo rep \"$@\"\n")]);
    root.continuous("svc", "exec sleep 300\n");
    let daemon = root.start();
    let http = root.http();
    for list in ["/api/webjobs", "/api/jobs", "/jobs"] {
        assert_eq!(http.get(list).json().as_array().unwrap().len(), 2, "{list}");
    }
    for path in
        ["/api/triggeredjobs/rep", "/jobs/triggered/rep", "/api/jobs/triggered/rep", "/api/triggeredwebjobs/rep"]
    {
        assert_eq!(http.get(path).json()["name"], "rep", "{path}");
    }
    for path in ["/api/continuousjobs/svc", "/jobs/continuous/svc", "/api/jobs/continuous/svc"] {
        assert_eq!(http.get(path).json()["type"], "continuous", "{path}");
    }
    let run = http.post("/api/triggeredjobs/rep/run?arguments=x");
    assert_eq!(run.status, 202, "{}", run.text());
    let id = run.json()["id"].as_str().unwrap().to_string();
    let done = http.get(&format!("/jobs/triggered/rep/history/{id}?wait=20")).json();
    assert_eq!(done["status"], "Success");
    assert_eq!(http.get("/api/jobs/triggered/rep/history").json()["runs"][0]["id"], id);
    let swagger = http.get("/api/triggeredwebjobsswagger").json();
    assert_eq!(swagger["swagger"], "2.0");
    let op = &swagger["paths"]["/api/triggeredjobs/rep/run"]["post"];
    assert_eq!(op["operationId"], "rep");
    assert_eq!(op["parameters"][0]["name"], "arguments");
    assert_eq!(op["parameters"][0]["in"], "query");
    assert!(swagger["paths"].get("/api/triggeredjobs/svc/run").is_none(), "only triggered jobs");
    daemon.stop();
}

#[test]
fn the_vfs_lists_and_serves_the_jobs_data_and_nothing_else() {
    let root = Root::new();
    root.job("triggered", "rep", &[("run.sh", "echo hello vfs\n")]);
    let daemon = root.start();
    let http = root.http();
    let base = format!("http://{}", http.addr);
    let run = http.post("/api/triggeredwebjobs/rep/run");
    let id = run.json()["id"].as_str().unwrap().to_string();
    http.get(&format!("/api/triggeredwebjobs/rep/history/{id}?wait=20"));
    let listing = http.get("/api/vfs/data/jobs/triggered/rep/").json();
    let entries = listing.as_array().unwrap();
    let dir = entries.iter().find(|e| e["name"] == id.as_str()).expect("the run folder is listed");
    assert_eq!(dir["mime"], "inode/directory");
    assert_eq!(dir["href"], format!("{base}/api/vfs/data/jobs/triggered/rep/{id}/"));
    assert_eq!(dir["path"], format!("/data/jobs/triggered/rep/{id}/"));
    for e in entries {
        for field in ["name", "mtime", "crtime", "mime", "href", "path"] {
            assert!(e[field].is_string(), "{field} in {e}");
        }
        assert!(e["size"].is_u64(), "{e}");
    }
    let files = http.get(&format!("/api/vfs/data/jobs/triggered/rep/{id}/")).json();
    let output = files.as_array().unwrap().iter().find(|e| e["name"] == "output_log.txt").unwrap().clone();
    let href = output["href"].as_str().unwrap().trim_start_matches(&base).to_string();
    let text = http.get(&href).text();
    assert!(text.contains("INFO] hello vfs"), "{text}");
    assert_eq!(output["size"].as_u64().unwrap() as usize, text.len());
    // The same file at the run's output_url (Kudu's older /vfs/ twin).
    let done = http.get(&format!("/api/triggeredwebjobs/rep/history/{id}")).json();
    assert_eq!(http.get(done["output_url"].as_str().unwrap().trim_start_matches(&base)).text(), text);
    // Confined to data/jobs: not the token, not a link that leads out.
    std::os::unix::fs::symlink("/etc/passwd", root.data_dir("triggered", "rep").join("job_scheduler.1.log")).unwrap();
    for path in [
        "/api/vfs/data/api-token",
        "/api/vfs/data/",
        "/api/vfs/data/jobs/../api-token",
        "/api/vfs/data/jobs/%2e%2e/api-token",
        "/api/vfs/data/jobs/triggered/rep/job_scheduler.1.log",
        "/api/vfs/etc/passwd",
    ] {
        let r = http.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(!r.text().contains("root:"), "{path}");
    }
    daemon.stop();
}

const WEB_PY: &str = r#"
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(n).decode()
        if self.path.startswith('/big'):
            data = b'x' * (2 * 1024 * 1024)
            self.send_response(200); self.send_header('Content-Length', str(len(data))); self.end_headers()
            self.wfile.write(data); return
        out = json.dumps({'method': self.command, 'path': self.path, 'body': body,
                          'auth': self.headers.get('Authorization'), 'x': self.headers.get('X-Test')}).encode()
        self.send_response(201); self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(out))); self.end_headers(); self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(os.environ['WEBJOBS_PORT'])), H).serve_forever()
"#;

#[test]
fn the_passthrough_reaches_the_job_on_webjobs_port() {
    let root = Root::new();
    root.job("continuous", "web", &[("run.py", WEB_PY)]);
    root.continuous("quiet", "exec sleep 300\n");
    let daemon = root.start();
    let http = root.http();
    wait_for("the job's server", Duration::from_secs(15), || {
        http.get("/api/continuouswebjobs/web/passthrough/ping").status == 201
    });
    let r = http.send(
        "POST",
        "/api/continuouswebjobs/web/passthrough/orders/42?full=1",
        &[("X-Test", "yes"), ("Content-Type", "text/plain")],
        b"payload",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/orders/42?full=1");
    assert_eq!(seen["body"], "payload");
    assert_eq!(seen["x"], "yes");
    assert!(seen["auth"].is_null(), "the daemon's credentials stay with the daemon: {seen}");
    let big = http.get("/api/continuouswebjobs/web/passthrough/big");
    assert_eq!(big.body.len(), 2 * 1024 * 1024);
    // A job that does not listen, a stopped job, an unknown job.
    assert_eq!(http.get("/api/continuouswebjobs/quiet/passthrough/x").status, 502);
    assert_eq!(http.post("/api/continuouswebjobs/web/stop").status, 200);
    assert_eq!(http.get("/api/continuouswebjobs/web/passthrough/ping").status, 503);
    assert_eq!(http.get("/api/continuouswebjobs/nope/passthrough/ping").status, 404);
    // Without credentials, nothing reaches the job.
    assert_eq!(http.without_auth().get("/api/continuouswebjobs/web/passthrough/ping").status, 401);
    daemon.stop();
}

#[test]
fn error_answers_never_show_server_paths() {
    let root = Root::new();
    root.job("triggered", "bad", &[("run.sh", "echo\n"), ("settings.job", r#"{"schedule": "nope"}"#)]);
    root.job("triggered", "good", &[("run.sh", "echo\n")]);
    let daemon = root.start();
    let http = root.http();
    let secret = root.path().display().to_string();
    let answers = [
        http.get("/api/triggeredwebjobs/bad"),
        http.get("/api/webjobs"),
        http.post("/api/triggeredwebjobs/bad/run"),
        http.send("PUT", "/api/triggeredwebjobs/good/settings", &[], b"{not json"),
        http.send("PUT", "/api/triggeredwebjobs/good/settings", &[], br#"{"timeout": -1}"#),
        http.send("PUT", "/api/triggeredwebjobs/empty", &[("Content-Disposition", "attachment; filename=x.txt")], b"x"),
    ];
    for r in &answers {
        assert!(!r.text().contains(&secret), "{} leaks {secret}: {}", r.status, r.text());
    }
    assert!(
        answers[0].json()["error"].as_str().unwrap().contains("jobs/triggered/bad/settings.job"),
        "{}",
        answers[0].text()
    );
    assert_eq!(answers[3].status, 400);
    assert!(answers[3].text().contains("settings.job"), "{}", answers[3].text());
    daemon.stop();
}

/// `kudu-api` from the npm registry, installed once under `target/` (the
/// project installs it; nothing is assumed to be there).
fn kudu_client() -> std::path::PathBuf {
    let prefix = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kudu-client");
    if !prefix.join("node_modules/kudu-api/package.json").exists() {
        let out = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg("kudu-api@1.4.1")
            .output()
            .expect("npm (installed with node by scripts/test)");
        assert!(out.status.success(), "npm install kudu-api: {}{}", stdout(&out), stderr(&out));
    }
    prefix.join("node_modules")
}

#[test]
fn a_real_kudu_client_from_npm_works_unchanged() {
    let modules = kudu_client();
    let root = Root::new();
    let daemon = root.start();
    let http = root.http();
    let work = root.path().join("client");
    std::fs::create_dir_all(&work).unwrap();
    let zip = make_zip(root.path(), &[("app/run.py", ECHO_ARGS)]);
    std::fs::write(work.join("job.zip"), zip).unwrap();
    std::fs::write(work.join("run.sh"), "trap 'exit 0' TERM\nwhile true; do echo beat; sleep 0.2; done\n").unwrap();
    let token = std::fs::read_to_string(root.path().join("data/api-token")).unwrap().trim().to_string();
    let out = std::process::Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/kudu_client.js"))
        .env("NODE_PATH", &modules)
        .env("KUDU_URL", format!("http://{}/", http.addr))
        .env("KUDU_TOKEN", token)
        .env("WORK", &work)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("all calls behaved as with Kudu"));
    daemon.stop();
}
