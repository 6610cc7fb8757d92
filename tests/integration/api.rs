//! The control plane over HTTP: every route with WebJobs' field names and
//! status codes, authentication, deploys, path traversal, concurrency.

use std::time::Duration;

use crate::helper::*;

fn api_root() -> (Root, Daemon) {
    let root = Root::with_config(serde_json::json!({"api_user": "deploy", "api_password": "s3cret-pass"}));
    root.continuous("worker", "trap 'exit 0' TERM\nwhile true; do echo working; sleep 0.2; done\n");
    root.job(
        "triggered",
        "report",
        &[
            ("run.py", "import sys\nprint('report', sys.argv[1:])\nprint('oops', file=sys.stderr)\n"),
            ("settings.job", r#"{"schedule": "0 0 3 * * *"}"#),
        ],
    );
    root.job("triggered", "slow", &[("run.sh", "echo started\nsleep 30\n")]);
    let daemon = root.start();
    wait_for("worker running", Duration::from_secs(10), || root.status_is("worker", "Running"));
    (root, daemon)
}

fn assert_fields(v: &serde_json::Value, fields: &[&str]) {
    for f in fields {
        assert!(v.get(*f).is_some(), "missing field {f} in {v}");
    }
}

#[test]
fn every_route_answers_with_webjobs_fields_and_status_codes() {
    let (root, daemon) = api_root();
    let http = root.http();
    let base = format!("http://{}", http.addr);

    // Lists, with ETag and 304.
    let all = http.get("/api/webjobs");
    assert_eq!(all.status, 200);
    let jobs = all.json();
    assert_eq!(jobs.as_array().unwrap().len(), 3);
    let etag = all.header("etag").unwrap().to_string();
    assert_eq!(http.send("GET", "/api/webjobs", &[("If-None-Match", &etag)], b"").status, 304);
    let continuous = http.get("/api/continuouswebjobs").json();
    assert_eq!(continuous.as_array().unwrap().len(), 1);
    let worker = &continuous[0];
    assert_fields(
        worker,
        &[
            "name",
            "type",
            "status",
            "detailed_status",
            "run_command",
            "settings",
            "url",
            "log_url",
            "error",
            "using_sdk",
        ],
    );
    assert_eq!(worker["type"], "continuous");
    assert_eq!(worker["status"], "Running");
    assert_eq!(worker["url"], format!("{base}/api/continuouswebjobs/worker"));
    let triggered = http.get("/api/triggeredwebjobs").json();
    let report = triggered.as_array().unwrap().iter().find(|j| j["name"] == "report").unwrap().clone();
    assert_fields(&report, &["latest_run", "history_url", "scheduler_logs_url", "settings", "run_command"]);
    assert_eq!(report["settings"]["schedule"], "0 0 3 * * *");
    assert!(report["next_run"].as_str().unwrap().contains("T03:00:00"));

    // One job; unknown jobs are 404.
    assert_eq!(http.get("/api/continuouswebjobs/worker").json()["name"], "worker");
    assert_eq!(http.get("/api/continuouswebjobs/nope").status, 404);
    assert_eq!(http.get("/api/triggeredwebjobs/worker").status, 404);

    // A run: 202 with Location; the run JSON; its output at output_url.
    let run = http.post("/api/triggeredwebjobs/report/run?arguments=a%20%22b%20c%22");
    assert_eq!(run.status, 202, "{}", run.text());
    let location = run.header("location").unwrap().to_string();
    assert!(location.starts_with(&format!("{base}/api/triggeredwebjobs/report/history/")), "{location}");
    let path = location.trim_start_matches(&base).to_string();
    let done = http.get(&format!("{path}?wait=10")).json();
    assert_fields(
        &done,
        &[
            "id",
            "name",
            "status",
            "start_time",
            "end_time",
            "duration",
            "output_url",
            "error_url",
            "url",
            "job_name",
            "trigger",
        ],
    );
    assert_eq!(done["status"], "Success");
    assert_eq!(done["arguments"], serde_json::json!(["a", "b c"]));
    assert!(done["duration"].as_str().unwrap().starts_with("00:00:0"));
    let output = http.get(done["output_url"].as_str().unwrap().trim_start_matches(&base));
    assert_eq!(output.status, 200);
    assert!(output.text().contains("INFO] report ['a', 'b c']") && output.text().contains("ERROR] oops"));
    let history = http.get("/api/triggeredwebjobs/report/history");
    assert_eq!(history.json()["runs"][0]["id"], done["id"]);
    let h_etag = history.header("etag").unwrap().to_string();
    assert_eq!(
        http.send("GET", "/api/triggeredwebjobs/report/history", &[("If-None-Match", &h_etag)], b"").status,
        304
    );
    assert_eq!(http.get("/api/triggeredwebjobs/report/history/209901010000000000").status, 404);
    assert_eq!(http.post("/api/triggeredwebjobs/nope/run").status, 404);

    // 409 while running; cancel.
    assert_eq!(http.post("/api/triggeredwebjobs/slow/run").status, 202);
    let conflict = http.post("/api/triggeredwebjobs/slow/run");
    assert_eq!(conflict.status, 409);
    assert!(conflict.json()["error"].as_str().unwrap().contains("already running"));
    assert_eq!(http.post("/api/triggeredwebjobs/slow/cancel").status, 200);
    assert_eq!(http.post("/api/triggeredwebjobs/slow/cancel").status, 409);

    // Start and stop write and remove disable.job.
    assert_eq!(http.post("/api/continuouswebjobs/worker/stop").status, 200);
    assert!(root.job_dir("continuous", "worker").join("disable.job").exists());
    wait_for("stopped", Duration::from_secs(10), || {
        http.get("/api/continuouswebjobs/worker").json()["status"] == "Stopped"
    });
    assert_eq!(http.post("/api/continuouswebjobs/worker/start").status, 200);
    wait_for("running", Duration::from_secs(10), || {
        http.get("/api/continuouswebjobs/worker").json()["status"] == "Running"
    });
    assert_eq!(http.post("/api/continuouswebjobs/nope/start").status, 404);

    // The log file at log_url; a live tail follows it.
    let log = http.get("/vfs/data/jobs/continuous/worker/job_log.txt");
    assert_eq!(log.status, 200);
    assert!(log.header("content-type").unwrap().starts_with("text/plain"));
    assert!(log.text().contains("INFO] working"));
    assert_eq!(http.get("/vfs/data/jobs/triggered/report/job_scheduler.log").status, 200);

    // Metrics and health.
    let metrics = http.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("webjobs_jobs{type=\"continuous\",status=\"Running\"} 1"), "{}", metrics.text());
    assert!(metrics.text().contains("webjobs_runs_total{type=\"triggered\",job=\"report\",result=\"Success\"} 1"));
    assert_eq!(http.get("/health").json()["status"], "ready");

    // The dashboard and its assets.
    let page = http.get("/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/assets/app.js"));
    assert_eq!(http.get("/assets/app.js").status, 200);
    daemon.stop();
}

#[test]
fn settings_are_validated_before_they_are_written() {
    let (root, daemon) = api_root();
    let http = root.http();
    let file = root.job_dir("triggered", "report").join("settings.job");
    let before = std::fs::read_to_string(&file).unwrap();
    assert_eq!(http.get("/api/triggeredwebjobs/report/settings").json()["schedule"], "0 0 3 * * *");
    let bad = http.send(
        "PUT",
        "/api/triggeredwebjobs/report/settings",
        &[("Content-Type", "application/json")],
        br#"{"schedule": "0 61 * * * *", "timeout": -1}"#,
    );
    assert_eq!(bad.status, 400);
    let problems = bad.json()["problems"].as_array().unwrap().clone();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before, "the file is untouched");
    let good = http.send(
        "PUT",
        "/api/triggeredwebjobs/report/settings",
        &[("Content-Type", "application/json")],
        br#"{"schedule": "0 0 4 * * *"}"#,
    );
    assert_eq!(good.status, 200, "{}", good.text());
    assert!(std::fs::read_to_string(&file).unwrap().contains("0 0 4 * * *"));
    wait_for("new schedule", Duration::from_secs(10), || {
        http.get("/api/triggeredwebjobs/report").json()["next_run"].as_str().is_some_and(|t| t.contains("T04:00:00"))
    });
    assert_eq!(http.get("/api/continuouswebjobs/nope/settings").status, 404);
    daemon.stop();
}

/// A zip whose headers say its first entry is 4 bytes long when it is longer.
fn lying_sizes(mut zip: Vec<u8>) -> Vec<u8> {
    let find = |zip: &[u8], signature: &[u8]| zip.windows(4).position(|w| w == signature).unwrap();
    let local = find(&zip, b"PK\x03\x04");
    let central = find(&zip, b"PK\x01\x02");
    for at in [local + 18, local + 22, central + 20, central + 24] {
        zip[at..at + 4].copy_from_slice(&4u32.to_le_bytes());
    }
    zip
}

#[test]
fn deploys_replace_jobs_atomically_and_refuse_bad_uploads() {
    let (root, daemon) = api_root();
    let http = root.http();
    // One file.
    let r = http.send(
        "PUT",
        "/api/continuouswebjobs/fresh",
        &[("Content-Disposition", "attachment; filename=\"run.sh\"")],
        b"echo deployed-v1\nexec sleep 300\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "fresh");
    wait_for("v1 runs", Duration::from_secs(10), || root.log("fresh").contains("] deployed-v1"));
    // A zip replaces it; the job restarts with the new files.
    let zip = make_zip(root.path(), &[("app/run.sh", "echo deployed-v2\nexec sleep 300\n"), ("app/lib/data.txt", "x")]);
    let r = http.send(
        "PUT",
        "/api/continuouswebjobs/fresh",
        &[("Content-Type", "application/zip"), ("Content-Disposition", "attachment; filename=fresh.zip")],
        &zip,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("v2 runs", Duration::from_secs(10), || root.log("fresh").contains("] deployed-v2"));
    assert!(root.job_dir("continuous", "fresh").join("app/lib/data.txt").exists());
    // Refused uploads leave the running version as it is.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (make_zip(root.path(), &[("../escape.sh", "echo x")]), "outside the job folder"),
        (make_zip(root.path(), &[("/etc/evil.sh", "echo x")]), "outside the job folder"),
        (make_zip(root.path(), &[("a/../../escape.sh", "echo x")]), "outside the job folder"),
        (make_zip(root.path(), &[("notes.txt", "no script")]), "No runnable script file was found."),
        (
            make_zip(root.path(), &[("run.sh", "echo"), ("settings.job", "{\"stopping_wait_time\": \"soon\"}")]),
            "stopping_wait_time",
        ),
        (b"this is not a zip".to_vec(), "not a valid zip"),
        (make_zip(root.path(), &[("run.sh", "echo"), ("run.sh/inner.txt", "x")]), "clashes with another entry"),
        (make_zip(root.path(), &[("run.sh", "echo"), (&"n".repeat(300), "x")]), "is too long"),
        (lying_sizes(make_zip(root.path(), &[("run.sh", "echo the whole script")])), "is damaged"),
    ];
    for (body, expected) in cases {
        let r = http.send(
            "PUT",
            "/api/continuouswebjobs/fresh",
            &[("Content-Type", "application/zip"), ("Content-Disposition", "attachment; filename=x.zip")],
            &body,
        );
        assert_eq!(r.status, 400, "{expected}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains(expected), "{expected}: {}", r.text());
    }
    assert!(
        !root.path().join("jobs/continuous/escape.sh").exists()
            && !root.path().join("jobs/escape.sh").exists()
            && !std::path::Path::new("/etc/evil.sh").exists()
    );
    assert!(root.job_dir("continuous", "fresh").join("app/run.sh").exists(), "the old version is kept");
    let r = http.send("PUT", "/api/continuouswebjobs/fresh", &[], b"echo");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "Missing Content-Disposition header.");
    assert_eq!(
        http.send(
            "PUT",
            "/api/continuouswebjobs/bad%20name",
            &[("Content-Disposition", "attachment; filename=run.sh")],
            b"echo"
        )
        .status,
        400
    );
    let long_job = format!("/api/continuouswebjobs/{}", "j".repeat(200));
    let r = http.send("PUT", &long_job, &[("Content-Disposition", "attachment; filename=run.sh")], b"echo");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("200 characters, more than the 128"), "{}", r.text());
    let long_file = format!("attachment; filename={}.sh", "f".repeat(300));
    let r = http.send("PUT", "/api/continuouswebjobs/fresh", &[("Content-Disposition", long_file.as_str())], b"echo");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("is too long"), "{}", r.text());
    // Delete stops the job and removes it with its data.
    let pids = daemon.job_pids("fresh");
    assert!(!pids.is_empty());
    let r = http.send("DELETE", "/api/continuouswebjobs/fresh", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!root.job_dir("continuous", "fresh").exists());
    assert!(!root.data_dir("continuous", "fresh").exists());
    wait_for("gone", Duration::from_secs(10), || pids.iter().all(|p| !alive(*p)));
    assert_eq!(http.get("/api/continuouswebjobs/fresh").status, 404);
    daemon.stop();
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/assets/app.js"),
    ("GET", "/api/webjobs"),
    ("GET", "/api/continuouswebjobs"),
    ("GET", "/api/triggeredwebjobs"),
    ("GET", "/api/continuouswebjobs/worker"),
    ("GET", "/api/triggeredwebjobs/report"),
    ("PUT", "/api/continuouswebjobs/worker"),
    ("DELETE", "/api/continuouswebjobs/worker"),
    ("GET", "/api/continuouswebjobs/worker/settings"),
    ("PUT", "/api/continuouswebjobs/worker/settings"),
    ("POST", "/api/continuouswebjobs/worker/start"),
    ("POST", "/api/continuouswebjobs/worker/stop"),
    ("POST", "/api/triggeredwebjobs/report/run"),
    ("POST", "/api/triggeredwebjobs/report/cancel"),
    ("GET", "/api/triggeredwebjobs/report/history"),
    ("GET", "/api/triggeredwebjobs/report/history/202611210000000000"),
    ("GET", "/vfs/data/jobs/continuous/worker/job_log.txt"),
    ("GET", "/metrics"),
    ("GET", "/health"),
    ("GET", "/no/such/route"),
];

#[test]
fn every_tcp_request_needs_credentials() {
    let (root, daemon) = api_root();
    let http = root.http();
    let basic = |user: &str, pass: &str| {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    };
    for (method, path) in ROUTES {
        for client in [
            http.without_auth(),
            http.with_auth(&basic("deploy", "wrong")),
            http.with_auth("Bearer not-the-token"),
            http.with_auth(&basic("", "")),
        ] {
            let r = client.send(method, path, &[], b"");
            assert_eq!(r.status, 401, "{method} {path} with {:?}", client.auth);
            assert!(r.header("www-authenticate").is_some());
        }
    }
    assert!(root.job_dir("continuous", "worker").join("run.sh").exists(), "nothing was done");
    assert!(!root.job_dir("continuous", "worker").join("disable.job").exists());
    // Configured Basic credentials and the token both work.
    assert_eq!(http.with_auth(&basic("deploy", "s3cret-pass")).get("/api/webjobs").status, 200);
    assert_eq!(http.get("/api/webjobs").status, 200);
    // A page of another site cannot make the browser act with its credentials.
    let r = http.with_auth(&basic("deploy", "s3cret-pass")).send(
        "POST",
        "/api/continuouswebjobs/worker/stop",
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(r.status, 403);
    assert!(!root.job_dir("continuous", "worker").join("disable.job").exists());
    let same = http.with_auth(&basic("deploy", "s3cret-pass")).send(
        "POST",
        "/api/continuouswebjobs/worker/stop",
        &[("Origin", &format!("http://{}", http.addr))],
        b"",
    );
    assert_eq!(same.status, 200);
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.path().join("data/api-token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    daemon.stop();
}

#[test]
fn log_urls_reach_log_files_and_nothing_else() {
    let (root, daemon) = api_root();
    let http = root.http();
    std::fs::write(root.path().join("data/secret.txt"), "top secret").unwrap();
    let attempts = [
        "/vfs/data/jobs/continuous/worker/../../../api-token",
        "/vfs/data/jobs/continuous/worker/..%2F..%2F..%2Fapi-token",
        "/vfs/data/jobs/continuous/..%2F..%2Fsecret.txt/job_log.txt",
        "/vfs/data/jobs/continuous/worker/status_x",
        "/vfs/data/jobs/continuous/worker/%2e%2e%2fstatus",
        "/vfs/data/jobs/triggered/report/..%2F..%2F..%2Fsecret.txt/output_log.txt",
        "/vfs/data/jobs/triggered/report/202611210000000000/..%2F..%2Fsecret.txt",
        "/vfs/data/jobs/other/worker/job_log.txt",
        "/vfs/data/secret.txt",
        "/vfs/data/api-token",
        "/vfs/data/jobs/continuous/worker/job_log.txt%00.png",
        "/vfs/data/jobs/continuous/worker/singleton.job.lock",
        "/vfs/data/instances/x.lock",
        "/../data/secret.txt",
        "/vfs/%2e%2e/%2e%2e/etc/passwd",
    ];
    let token = std::fs::read_to_string(root.path().join("data/api-token")).unwrap();
    for path in attempts {
        let r = http.get(path);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        let text = r.text();
        assert!(
            !text.contains("top secret") && !text.contains(token.trim()) && !text.contains("root:"),
            "{path} leaked: {text}"
        );
    }
    daemon.stop();
}

#[test]
fn fifty_concurrent_run_requests_start_exactly_one_run() {
    let (root, daemon) = api_root();
    let http = root.http();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (addr, auth, barrier) = (http.addr.clone(), http.auth.clone(), barrier.clone());
            std::thread::spawn(move || {
                let client = Http { addr, auth };
                barrier.wait();
                client.post("/api/triggeredwebjobs/slow/run").status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 49, "{statuses:?}");
    assert_eq!(root.runs("slow").len(), 1);
    http.post("/api/triggeredwebjobs/slow/cancel");
    daemon.stop();
}

#[test]
fn a_live_tail_streams_output_while_the_run_goes_on() {
    let (root, daemon) = api_root();
    root.job("triggered", "ticker", &[("run.sh", "for i in 1 2 3 4; do echo \"tick $i\"; sleep 0.3; done\n")]);
    wait_for("ticker known", Duration::from_secs(10), || root.http().get("/api/triggeredwebjobs/ticker").status == 200);
    let http = root.http();
    let run = http.post("/api/triggeredwebjobs/ticker/run").json();
    let id = run["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    let tail = http.get(&format!("/vfs/data/jobs/triggered/ticker/{id}/output_log.txt?follow=1"));
    assert!(started.elapsed() >= Duration::from_millis(800), "the tail lasted as long as the run");
    let text = tail.text();
    for i in 1..=4 {
        assert!(text.contains(&format!("INFO] tick {i}")), "{text}");
    }
    assert!(text.contains("ended: Success"));
    daemon.stop();
}

#[test]
fn the_cli_goes_through_the_api_and_says_when_no_daemon_runs() {
    let (root, daemon) = api_root();
    let out = root.cli(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[0]["url"], "/api/continuouswebjobs/worker", "relative URLs on the Unix socket");
    assert!(stderr(&out).is_empty());
    let out = root.cli(&["stop", "worker"]);
    assert!(out.status.success());
    wait_for("stopped", Duration::from_secs(10), || root.status_is("worker", "Stopped"));
    assert!(stdout(&root.cli(&["status", "worker"])).contains("status:   Stopped"));
    root.cli(&["run", "report", "--wait"]);
    assert!(stdout(&root.cli(&["history", "report"])).contains("Success"));
    assert!(stdout(&root.cli(&["logs", "report"])).contains("INFO] report"));
    daemon.stop();
    let out = root.cli(&["list"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("no daemon is running"), "{}", stderr(&out));
    let out = root.cli(&["run", "report"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("no webjobs daemon is running"));
}

#[test]
fn uploads_over_the_limit_are_refused_and_the_socket_is_private() {
    let root = Root::with_config(serde_json::json!({"max_upload_bytes": 2048}));
    let daemon = root.start();
    let http = root.http();
    let big = vec![b'x'; 4096];
    let r =
        http.send("PUT", "/api/continuouswebjobs/big", &[("Content-Disposition", "attachment; filename=run.sh")], &big);
    assert_eq!(r.status, 413);
    assert!(!root.job_dir("continuous", "big").exists());
    let small = http.send(
        "PUT",
        "/api/continuouswebjobs/small",
        &[("Content-Disposition", "attachment; filename=run.sh")],
        b"exec sleep 300\n",
    );
    assert_eq!(small.status, 200, "{}", small.text());
    // A body announced too large is refused at once, before any of it is sent.
    let mut stream = std::net::TcpStream::connect(&http.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "PUT /api/continuouswebjobs/huge HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Disposition: attachment; filename=run.sh\r\nContent-Length: 900000000\r\n\r\n",
        http.addr,
        http.auth.as_deref().unwrap()
    );
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    let mut answer = [0u8; 64];
    let n = std::io::Read::read(&mut stream, &mut answer).expect("answered without the body");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    use std::os::unix::fs::PermissionsExt;
    let socket = std::fs::read_dir(root.path().join("data/instances"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .unwrap();
    assert_eq!(socket.metadata().unwrap().permissions().mode() & 0o777, 0o660);
    daemon.stop();
}

#[test]
fn idle_connections_cannot_starve_the_daemon() {
    use std::os::unix::process::CommandExt;
    let root = Root::new();
    root.job(
        "continuous",
        "flappy",
        &[("run.sh", "exit 1\n"), ("settings.job", r#"{"restart_delay": 0.05, "max_restart_delay": 0.1}"#)],
    );
    let log_path = root.path().join("daemon.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["--root", root.path().to_str().unwrap(), "--config", root.config_path().to_str().unwrap(), "serve"])
        .env("WEBJOBS_INSTANCE_ID", &root.instance)
        .stderr(std::fs::File::create(&log_path).unwrap());
    // SAFETY: setrlimit in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut daemon = cmd.spawn().unwrap();
    wait_for("daemon", Duration::from_secs(10), || read(&log_path).contains("webjobs is running"));
    let http = root.http();
    // 500 clients connect and send nothing.
    let idle: Vec<std::net::TcpStream> = (0..500).map(|_| std::net::TcpStream::connect(&http.addr).unwrap()).collect();
    let restarts = || root.status("flappy")["Restarts"].as_u64().unwrap_or(0);
    let before = restarts();
    wait_for("the crash-looping job to go on restarting", Duration::from_secs(10), || restarts() >= before + 20);
    // The CLI (Unix socket) answers at once; TCP answers once idle connections time out.
    let started = std::time::Instant::now();
    let out = root.cli(&["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "the CLI waited {:?}", started.elapsed());
    let started = std::time::Instant::now();
    assert_eq!(http.get("/health").status, 200);
    assert!(started.elapsed() < Duration::from_secs(15), "/health answered after {:?}", started.elapsed());
    assert!(read(&log_path).contains("as many connections open as it allows"), "{}", read(&log_path));
    // An idle connection is closed by the daemon.
    let mut first = &idle[0];
    first.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut first, &mut buf).unwrap_or(0), 0, "closed by the daemon");
    drop(idle);
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
}

#[test]
fn silent_and_idle_keep_alive_connections_are_closed() {
    use std::io::{Read, Write};
    let root = Root::new();
    let daemon = root.start();
    let http = root.http();
    let token = std::fs::read_to_string(root.path().join("data/api-token")).unwrap();
    let silent = std::net::TcpStream::connect(&http.addr).unwrap();
    let mut kept = std::net::TcpStream::connect(&http.addr).unwrap();
    let request =
        format!("GET /health HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n", http.addr, token.trim());
    kept.write_all(request.as_bytes()).unwrap();
    // A deploy that announces more body than it sends, then goes quiet.
    let mut stalled = std::net::TcpStream::connect(&http.addr).unwrap();
    let upload = format!(
        "PUT /api/triggeredwebjobs/slow HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Disposition: attachment; filename=run.sh\r\nContent-Length: 1000\r\n\r\necho half",
        http.addr,
        token.trim()
    );
    stalled.write_all(upload.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "keep-alive answered");
    let mut answers = Vec::new();
    for mut stream in [&silent, &kept, &stalled] {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => panic!("not closed by the daemon: {e}"),
            }
        }
        answers.push(String::from_utf8_lossy(&answer).into_owned());
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(15), "closed after {took:?}");
    assert!(answers[2].starts_with("HTTP/1.1 408"), "{}", answers[2]);
    assert!(answers[2].contains("the request body stopped arriving"), "{}", answers[2]);
    assert!(!root.path().join("jobs/triggered/slow").exists(), "half an upload is never deployed");
    daemon.stop();
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_big_log_is_served_in_bounded_memory_and_by_ranges() {
    use std::io::{Read, Write};
    let root = Root::new();
    root.continuous("big", "exec sleep 300\n");
    let daemon = root.start();
    wait_for("running", Duration::from_secs(10), || root.status_is("big", "Running"));
    // A 1 GiB rotated log (sparse: it reads as zeros without touching the disk).
    let path = root.data_dir("continuous", "big").join("job_log.1.txt");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 30).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(b"FIRST").unwrap();
    let http = root.http();
    let before = peak_rss_kib(daemon.pid() as u32);
    let mut stream = std::net::TcpStream::connect(&http.addr).unwrap();
    let auth = http.auth.clone().unwrap();
    let request = format!(
        "GET /vfs/data/jobs/continuous/big/job_log.1.txt HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > 1 << 30, "the whole file came: {total}");
    let growth = peak_rss_kib(daemon.pid() as u32).saturating_sub(before);
    assert!(growth < 16 * 1024, "daemon peak RSS grew {growth} KiB serving 1 GiB");
    let head = http.send("GET", "/vfs/data/jobs/continuous/big/job_log.1.txt", &[("Range", "bytes=0-4")], b"");
    assert_eq!(head.status, 206);
    assert_eq!(head.body, b"FIRST");
    assert_eq!(head.header("content-range"), Some("bytes 0-4/1073741824"));
    let tail = http.send("GET", "/vfs/data/jobs/continuous/big/job_log.1.txt", &[("Range", "bytes=-3")], b"");
    assert_eq!((tail.status, tail.body.len()), (206, 3));
    let beyond =
        http.send("GET", "/vfs/data/jobs/continuous/big/job_log.1.txt", &[("Range", "bytes=2000000000-")], b"");
    assert_eq!(beyond.status, 416);
    daemon.stop();
}

#[test]
fn the_job_list_shows_a_clients_own_writes_at_once() {
    let (root, daemon) = api_root();
    let http = root.http();
    let names = |http: &Http| -> Vec<String> {
        http.get("/api/webjobs")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect()
    };
    let before = names(&http); // rendered and kept
    for round in 0..3 {
        let job = format!("fresh{round}");
        let r = http.send(
            "PUT",
            &format!("/api/triggeredwebjobs/{job}"),
            &[("Content-Disposition", "attachment; filename=run.sh")],
            b"echo hi\n",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(names(&http).contains(&job), "deployed {job}, not in the list asked for next (before: {before:?})");
        let r = http.send("POST", &format!("/api/triggeredwebjobs/{job}/stop"), &[], b"");
        assert_eq!(r.status, 200);
        let list = http.get("/api/webjobs").json();
        let entry = list.as_array().unwrap().iter().find(|j| j["name"] == job.as_str()).cloned().unwrap();
        assert_eq!(entry["status"], "Stopped", "{entry}");
    }
    // A change made outside the API shows within a render.
    root.job("triggered", "byhand", &[("run.sh", "echo hi\n")]);
    wait_for("the hand-made job listed", Duration::from_secs(10), || names(&http).contains(&"byhand".to_string()));
    daemon.stop();
}
