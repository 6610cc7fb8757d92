//! The event stream: `GET /api/events` (server-sent events) and `webjobs events`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helper::*;

/// A client of the event stream over TCP (HTTP/1.0: the body is the stream
/// until the server closes it).
struct Events {
    lines: BufReader<TcpStream>,
}

impl Events {
    fn connect(http: &Http, query: &str, last_id: Option<u64>) -> Events {
        let mut stream = TcpStream::connect(&http.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = format!("GET /api/events{query} HTTP/1.0\r\nHost: {}\r\n", http.addr);
        if let Some(auth) = &http.auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        if let Some(id) = last_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let mut lines = BufReader::new(stream);
        let mut status = String::new();
        lines.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut header = String::new();
            lines.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if header.to_ascii_lowercase().starts_with("content-type:") {
                assert!(header.contains("text/event-stream"), "{header}");
            }
        }
        Events { lines }
    }

    /// The next event: its SSE type and its JSON.
    fn next(&mut self) -> (String, serde_json::Value) {
        let (mut kind, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("an event within 20 s");
            assert!(n > 0, "the stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return (kind, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// Events until one of type `last` (included).
    fn until(&mut self, last: &str) -> Vec<(String, serde_json::Value)> {
        let mut seen = Vec::new();
        loop {
            let event = self.next();
            let done = event.0 == last;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn types(events: &[(String, serde_json::Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn the_stream_tells_a_runs_life_and_a_jobs_status_as_they_happen() {
    let root = Root::new();
    root.job(
        "triggered",
        "flaky",
        &[("run.sh", "echo trying; exit 3\n"), ("settings.job", r#"{"retries": 1, "retry_delay": 0}"#)],
    );
    root.continuous("worker", "exec sleep 300\n");
    let daemon = root.start();
    wait_for("the worker", Duration::from_secs(10), || root.status_is("worker", "Running"));
    let http = root.http();
    let mut flaky = Events::connect(&http, "?job=flaky", None);
    let mut all = Events::connect(&http, "", None);
    let out = root.cli(&["run", "flaky"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = flaky.until("run.dead");
    assert_eq!(
        types(&seen),
        ["run.queued", "run.started", "run.ended", "run.retry", "run.started", "run.ended", "run.dead"],
        "{seen:?}"
    );
    let request = seen[0].1["request"].as_str().unwrap().to_string();
    assert!(seen.iter().all(|(_, e)| e["request"] == request.as_str()), "one request throughout: {seen:?}");
    assert!(seen.iter().all(|(_, e)| e["job"] == "flaky" && e["job_type"] == "triggered"));
    let ids: Vec<u64> = seen.iter().map(|(_, e)| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let ended = &seen[2].1;
    assert_eq!(ended["status"], "Failed");
    assert_eq!(ended["detail"]["ExitCode"], 3, "{ended}");
    assert_eq!(seen[4].1["detail"]["Attempt"], 2);
    // The unfiltered stream has the same, and a continuous job's status.
    assert_eq!(types(&all.until("run.dead")).len(), 7);
    assert!(root.cli(&["stop", "worker"]).status.success());
    let statuses: Vec<String> = all
        .until("job.status")
        .into_iter()
        .chain(std::iter::once(all.next()))
        .filter(|(k, e)| k == "job.status" && e["job"] == "worker")
        .map(|(_, e)| e["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["Stopping", "Stopped"]);
    // A client that reconnects with the last id it saw gets what followed it.
    let mut again = Events::connect(&http, "?job=flaky", Some(ids[3]));
    assert_eq!(types(&again.until("run.dead")), ["run.started", "run.ended", "run.dead"]);
    daemon.stop();
}

#[test]
fn the_stream_needs_credentials_like_every_route() {
    let root = Root::new();
    let daemon = root.start();
    let mut http = root.http();
    http.auth = None;
    assert_eq!(http.get("/api/events").status, 401);
    daemon.stop();
}

#[test]
fn webjobs_events_follows_the_stream_until_the_daemon_stops() {
    let root = Root::new();
    root.job("triggered", "hello", &[("run.sh", "echo hello\n")]);
    root.job("triggered", "other", &[("run.sh", "echo other\n")]);
    let daemon = root.start();
    let follow = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(["--root", root.path().to_str().unwrap(), "--config", root.config_path().to_str().unwrap()])
            .arg("events")
            .args(args)
            .env("WEBJOBS_INSTANCE_ID", &root.instance)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let (mut json, json_lines) = follow(&["--job", "hello", "--json"]);
    let (mut text, text_lines) = follow(&["--type", "run.ended"]);
    // Both are connected once a run started meanwhile shows up in their streams.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut seen, mut out): (Vec<serde_json::Value>, Vec<String>) = (Vec::new(), Vec::new());
    let hello_ended = |out: &[String]| out.iter().any(|l| l.contains("triggered/hello") && l.contains("Success"));
    while !seen.iter().any(|e| e["type"] == "run.ended") || !hello_ended(&out) {
        assert!(Instant::now() < deadline, "no run.ended of hello in 20 s: {seen:?} {out:?}");
        assert!(root.cli(&["run", "other", "--wait"]).status.success());
        assert!(root.cli(&["run", "hello", "--wait"]).status.success());
        std::thread::sleep(Duration::from_millis(200));
        for line in json_lines.try_iter() {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(event["job"], "hello", "--job keeps one job's events: {event}");
            seen.push(event);
        }
        out.extend(text_lines.try_iter());
    }
    let ended = seen.iter().find(|e| e["type"] == "run.ended").unwrap();
    assert_eq!(ended["status"], "Success", "{seen:?}");
    daemon.stop();
    // The stream ends with the daemon, and so do the commands, successfully.
    for child in [&mut json, &mut text] {
        let status = wait_child(child, Duration::from_secs(20), "webjobs events");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{status:?}: {err}");
    }
    out.extend(text_lines.try_iter());
    assert!(out.iter().all(|l| l.contains("run.ended") || l.contains("daemon.")), "--type keeps run.ended: {out:?}");
}
