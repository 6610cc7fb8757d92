//! The durable run queue: payloads, dedup keys, priorities, retries to Dead
//! and back, one-off runs later, and what survives a SIGKILLed daemon.

use std::time::Duration;

use crate::helper::*;

/// A gate the jobs wait on (a file they poll for), so that requests pile up.
fn gated(root: &Root) -> (std::path::PathBuf, String) {
    let gate = root.path().join("gate");
    let wait = format!("while [ ! -e {} ]; do sleep 0.02; done\n", gate.display());
    (gate, wait)
}

#[test]
fn a_payload_reaches_the_script_on_stdin_and_as_a_file_with_attempt_and_correlation_id() {
    let root = Root::new();
    let script = r#"import json, os, sys
data = sys.stdin.read()
with open(os.environ["WEBJOBS_PAYLOAD_FILE"]) as f:
    from_file = f.read()
print(json.dumps({"stdin": data, "file": from_file, "attempt": os.environ["WEBJOBS_ATTEMPT"],
                  "correlation": os.environ.get("WEBJOBS_CORRELATION_ID"), "args": sys.argv[1:]}))
"#;
    root.job("triggered", "py", &[("run.py", script)]);
    let daemon = root.start();
    let payload = root.path().join("order.json");
    std::fs::write(&payload, r#"{"order": 42, "text": "é\n"}"#).unwrap();
    let out = root.cli(&[
        "run",
        "py",
        "--payload",
        &format!("@{}", payload.display()),
        "--correlation-id",
        "c-77",
        "--wait",
        "--",
        "a b",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).split_whitespace().next().unwrap().to_string();
    let line = output_lines(&root.run_log("py", &id), "INFO").pop().unwrap();
    let seen: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(seen["stdin"], r#"{"order": 42, "text": "é\n"}"#);
    assert_eq!(seen["file"], seen["stdin"]);
    assert_eq!(seen["attempt"], "1");
    assert_eq!(seen["correlation"], "c-77");
    assert_eq!(seen["args"], serde_json::json!(["a b"]));
    let status = root.run_status("py", &id);
    assert_eq!(status["CorrelationId"], "c-77");
    assert_eq!(status["PayloadBytes"], 29);
    assert_eq!(status["Attempt"], 1);
    // Over HTTP: the body is the payload; a payload over the limit is 413.
    let reply = root.http().send("POST", "/api/triggeredwebjobs/py/run", &[], b"from http");
    assert_eq!(reply.status, 202, "{}", reply.text());
    let run = reply.json()["id"].as_str().unwrap().to_string();
    wait_for("the run's end", Duration::from_secs(10), || root.run_status("py", &run)["Status"] == "Success");
    assert!(root.run_log("py", &run).contains(r#""stdin": "from http""#));
    let big = vec![b'x'; 1024 * 1024 + 1];
    let reply = root.http().send("POST", "/api/triggeredwebjobs/py/run", &[], &big);
    assert_eq!(reply.status, 413);
    assert!(reply.text().contains("max_payload_bytes"), "{}", reply.text());
    daemon.stop();
}

#[test]
fn queued_requests_start_by_priority_and_a_dedup_key_refuses_a_duplicate() {
    let root = Root::new();
    let (gate, wait) = gated(&root);
    let order = root.path().join("order");
    let script = format!("{wait}echo \"$1\" >> {}\n", order.display());
    root.job("triggered", "work", &[("run.sh", &script)]);
    let daemon = root.start();
    let enqueue = |args: &[&str]| {
        let mut all = vec!["enqueue", "work"];
        all.extend_from_slice(args);
        root.cli(&all)
    };
    assert!(enqueue(&["--", "first"]).status.success());
    wait_for("the first running", Duration::from_secs(5), || root.runs("work").len() == 1);
    for (args, word) in [(vec!["--priority", "0"], "low1"), (vec!["--priority", "5"], "high"), (vec![], "low2")] {
        let mut args = args.clone();
        args.extend(["--key", word, "--", word]);
        let out = enqueue(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).ends_with("queued\n"), "{}", stdout(&out));
    }
    let out = enqueue(&["--key", "high", "--", "again"]);
    assert_eq!(out.status.code(), Some(4), "a duplicate key is refused: {}", stdout(&out));
    assert!(stderr(&out).contains("already queued or running"), "{}", stderr(&out));
    let queued = root.http().get("/api/triggeredwebjobs/work/queue").json();
    let ids: Vec<_> = queued["requests"].as_array().unwrap().iter().map(|r| r["arguments"][0].clone()).collect();
    assert_eq!(ids, ["high", "low1", "low2"], "listed in the order they start");
    assert!(root.http().get("/metrics").text().contains("webjobs_queue_depth{type=\"triggered\",job=\"work\"} 3"));
    std::fs::write(&gate, "").unwrap();
    wait_for("all four ran", Duration::from_secs(10), || root.finished_runs("work").len() == 4);
    assert_eq!(read(&order), "first\nhigh\nlow1\nlow2\n");
    // The key is free once its request is done.
    assert!(enqueue(&["--key", "high", "--", "again"]).status.success());
    daemon.stop();
}

#[test]
fn a_request_failing_every_attempt_is_dead_and_can_be_queued_again() {
    let root = Root::new();
    let flag = root.path().join("fixed");
    let script = format!("echo \"attempt $WEBJOBS_ATTEMPT\"\n[ -e {} ]\n", flag.display());
    root.job("triggered", "flaky", &[("run.sh", &script), ("settings.job", r#"{"retries": 1, "retry_delay": 0.05}"#)]);
    let daemon = root.start();
    assert!(root.cli(&["enqueue", "flaky", "--payload", "data"]).status.success());
    wait_for("two failed attempts", Duration::from_secs(10), || root.finished_runs("flaky").len() == 2);
    let runs = root.runs("flaky");
    assert!(root.run_log("flaky", &runs[1]).contains("attempt 2"));
    let mut dead = serde_json::Value::Null;
    wait_for("the request is dead", Duration::from_secs(5), || {
        dead = serde_json::from_str(&stdout(&root.cli(&["dead", "flaky", "--json"]))).unwrap_or_default();
        dead["count"] == 1
    });
    let request = &dead["requests"][0];
    assert_eq!(request["attempts"], 2);
    assert_eq!(request["runs"], serde_json::json!(runs));
    assert!(request["error"].as_str().unwrap().contains("exit code 1"), "{request}");
    assert!(stdout(&root.cli(&["dead", "flaky"])).contains(&runs[1]));
    std::fs::write(&flag, "").unwrap();
    let out = root.cli(&["retry", "flaky", &runs[1]]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for("the third run succeeded", Duration::from_secs(10), || {
        root.finished_runs("flaky").iter().any(|r| r["Status"] == "Success")
    });
    let last = root.runs("flaky").pop().unwrap();
    assert!(root.run_log("flaky", &last).contains("attempt 1"), "attempts start over");
    assert!(root.data_dir("triggered", "flaky").join(&last).join("payload").exists(), "the payload went along");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&root.cli(&["dead", "flaky", "--json"]))).unwrap()["count"],
        0
    );
    daemon.stop();
}

#[test]
fn a_one_off_run_fires_once_at_its_time_even_across_a_restart_and_can_be_cancelled() {
    let root = Root::new();
    root.job("triggered", "later", &[("run.sh", "echo ran\n")]);
    let daemon = root.start();
    let out = root.cli(&["run", "later", "--in", "2s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("queued for later"), "{}", stdout(&out));
    let asked = std::time::SystemTime::now();
    let out = root.cli(&["run", "later", "--in", "1h"]);
    let cancelled = stdout(&out).split_whitespace().next().unwrap().to_string();
    assert!(stdout(&root.cli(&["queue", "later"])).contains(&cancelled));
    let out = root.cli(&["cancel", "later", &cancelled]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    daemon.stop();
    assert!(root.runs("later").is_empty());
    let daemon = root.start();
    wait_for("the one-off run", Duration::from_secs(10), || root.finished_runs("later").len() == 1);
    let started = root.finished_runs("later")[0]["StartTime"].as_str().unwrap().to_string();
    let started: jiff::Timestamp = started.parse().unwrap();
    let due = jiff::Timestamp::try_from(asked).unwrap() + jiff::SignedDuration::from_millis(1900);
    assert!(started >= due, "not before its time: {started} < {due}");
    let queued = root.http().get("/api/triggeredwebjobs/later/queue").json();
    assert_eq!(queued["count"], 0, "the cancelled one is gone: {queued}");
    daemon.stop();
    assert_eq!(root.runs("later").len(), 1, "fired once");
}

#[test]
fn a_sigkilled_daemon_loses_no_acknowledged_run_of_a_thousand() {
    let root = Root::new();
    let (gate, wait) = gated(&root);
    let done = root.path().join("done");
    let script = format!("{wait}echo \"$WEBJOBS_REQUEST_ID\" >> {}\n", done.display());
    root.job("triggered", "drain", &[("run.sh", &script), ("settings.job", r#"{"retries": 1, "retry_delay": 0}"#)]);
    let daemon = root.start();
    let http = root.http();
    let mut acknowledged = Vec::new();
    for i in 0..1000 {
        let reply = http.send("POST", &format!("/api/triggeredwebjobs/drain/queue?arg={i}"), &[], b"");
        assert_eq!(reply.status, 202, "{}", reply.text());
        let body = reply.json();
        let id = body["request"].as_str().unwrap().to_string();
        acknowledged.push(id);
    }
    std::fs::write(&gate, "").unwrap();
    wait_for("some drained", Duration::from_secs(20), || read(&done).lines().count() >= 100);
    daemon.kill9();
    let drained_before = read(&done).lines().count();
    assert!(drained_before < 1000, "killed during the drain");
    let daemon = root.start();
    wait_for("all drained", Duration::from_secs(60), || {
        let text = read(&done);
        let mut seen: Vec<&str> = text.lines().collect();
        seen.sort();
        seen.dedup();
        seen.len() >= 1000
    });
    let text = read(&done);
    let lines: Vec<&str> = text.lines().collect();
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    let mut expected: Vec<&str> = acknowledged.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(unique, expected, "every acknowledged request ran");
    // Only what was in flight at the kill may have run twice (at-least-once).
    assert!(lines.len() - unique.len() <= 1, "{} ran twice", lines.len() - unique.len());
    daemon.stop();
}

#[test]
fn a_run_reports_progress_while_it_runs_and_leaves_a_result() {
    let root = Root::new();
    let gate = root.path().join("gate");
    let script = format!(
        r#"const fs = require("fs");
fs.writeFileSync(process.env.WEBJOBS_PROGRESS_FILE, "50 halfway there\n");
const pause = new Int32Array(new SharedArrayBuffer(4));
while (!fs.existsSync({gate:?})) Atomics.wait(pause, 0, 0, 20);
fs.writeFileSync(process.env.WEBJOBS_PROGRESS_FILE, JSON.stringify({{percent: 100, message: "done"}}));
fs.writeFileSync(process.env.WEBJOBS_RESULT_FILE, JSON.stringify({{rows: 3, id: process.env.WEBJOBS_CORRELATION_ID}}));
"#,
        gate = gate.display().to_string()
    );
    root.job("triggered", "report", &[("run.js", &script)]);
    root.job("triggered", "sloppy", &[("run.sh", "echo 'not json' > \"$WEBJOBS_RESULT_FILE\"\n")]);
    let huge =
        "python3 -c 'import json, os; json.dump([\"x\" * 70000], open(os.environ[\"WEBJOBS_RESULT_FILE\"], \"w\"))'\n";
    root.job("triggered", "huge", &[("run.sh", huge)]);
    let daemon = root.start();
    let out = root.cli(&["run", "report", "--correlation-id", "c-9"]);
    let id = stdout(&out).trim().to_string();
    let path = format!("/api/triggeredwebjobs/report/history/{id}");
    wait_for("live progress", Duration::from_secs(10), || root.http().get(&path).json()["progress"]["percent"] == 50.0);
    assert_eq!(root.http().get(&path).json()["progress"]["message"], "halfway there");
    assert!(stdout(&root.cli(&["status", "report"])).contains("progress: 50% halfway there"));
    std::fs::write(&gate, "").unwrap();
    wait_for("the first run's end", Duration::from_secs(10), || root.finished_runs("report").len() == 1);
    let out = root.cli(&["run", "report", "--correlation-id", "c-10", "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(run["result"], serde_json::json!({"rows": 3, "id": "c-10"}));
    assert_eq!(run["progress"]["percent"], 100.0);
    assert_eq!(run["correlation_id"], "c-10");
    let first = root.http().get(&path).json();
    assert_eq!(first["result"]["id"], "c-9", "{first}");
    let out = root.cli(&["run", "sloppy", "--wait", "--json"]);
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(run["result"].is_null());
    assert!(run["result_error"].as_str().unwrap().contains("not JSON"), "{run}");
    assert!(root.run_log("sloppy", run["id"].as_str().unwrap()).contains("SYS WARN] the result file is not JSON"));
    let out = root.cli(&["run", "huge", "--wait", "--json"]);
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(run["status"], "Success", "a result refused does not fail the run");
    assert!(run["result_error"].as_str().unwrap().contains("more than the 65536 allowed"), "{run}");
    daemon.stop();
}

#[test]
fn another_daemon_takes_over_the_queue_of_one_that_dies() {
    let root = Root::new();
    let (gate, wait) = gated(&root);
    let done = root.path().join("done");
    let script = format!("{wait}echo \"$WEBJOBS_REQUEST_ID $WEBJOBS_ATTEMPT\" >> {}\n", done.display());
    root.job("triggered", "shared", &[("run.sh", &script), ("settings.job", r#"{"retries": 1, "retry_delay": 0}"#)]);
    let a = Daemon::start_as(&root, "a", &[]);
    let b = Daemon::start_as(&root, "b", &[]);
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let out = root.cli_as("a", &["enqueue", "shared", "--", &i.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        acknowledged.push(stdout(&out).split_whitespace().next().unwrap().to_string());
    }
    wait_for("a run active on a", Duration::from_secs(5), || !a.job_pids("shared").is_empty());
    let leftovers = a.kill9();
    drop(leftovers); // its run's processes too: the machine went away
    std::fs::write(&gate, "").unwrap();
    wait_for("b ran them all", Duration::from_secs(30), || read(&done).lines().count() >= 20);
    let text = read(&done);
    let ran: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let mut unique = ran.clone();
    unique.sort();
    unique.dedup();
    acknowledged.sort();
    assert_eq!(unique, acknowledged, "every acknowledged request ran: {text}");
    // The one in flight on `a` (killed with it) had its second attempt on `b`; no other ran twice.
    assert_eq!(text.lines().filter(|l| l.ends_with(" 2")).count(), 1, "{text}");
    assert!(ran.len() - unique.len() <= 1, "{text}");
    assert!(read(&b.stderr_path).contains("a daemon sharing the data folder is gone"));
    b.stop();
}

#[test]
fn a_one_off_run_missed_while_no_daemon_ran_follows_catch_up() {
    let root = Root::new();
    root.job("triggered", "strict", &[("run.sh", "echo ran\n"), ("settings.job", r#"{"catch_up": "none"}"#)]);
    root.job("triggered", "lenient", &[("run.sh", "echo ran\n")]);
    let daemon = root.start();
    for job in ["strict", "lenient"] {
        assert!(root.cli(&["run", job, "--in", "1s"]).status.success());
    }
    daemon.stop();
    let due = std::time::Instant::now() + Duration::from_millis(2100);
    wait_for("both times passed while no daemon ran", Duration::from_secs(5), || std::time::Instant::now() > due);
    let daemon = root.start();
    wait_for("the lenient one ran late", Duration::from_secs(10), || root.finished_runs("lenient").len() == 1);
    let dead: serde_json::Value = serde_json::from_str(&stdout(&root.cli(&["dead", "strict", "--json"]))).unwrap();
    assert_eq!(dead["count"], 1, "{dead}");
    assert!(dead["requests"][0]["error"].as_str().unwrap().contains("missed its time"));
    assert!(root.runs("strict").is_empty());
    daemon.stop();
}

#[test]
fn max_parallel_runs_a_job_side_by_side_within_the_daemons_max_concurrent_runs() {
    let root = Root::with_config(serde_json::json!({"max_concurrent_runs": 4}));
    let (gate, wait) = gated(&root);
    for job in ["wide", "other"] {
        root.job("triggered", job, &[("run.sh", &wait), ("settings.job", r#"{"max_parallel": 3}"#)]);
    }
    let daemon = root.start();
    for _ in 0..3 {
        assert!(root.cli(&["enqueue", "wide"]).status.success());
    }
    let running =
        |job: &str| root.runs(job).iter().filter(|id| root.run_status(job, id)["Status"] == "Running").count();
    wait_for("three of wide side by side", Duration::from_secs(10), || running("wide") == 3);
    for _ in 0..3 {
        assert!(root.cli(&["enqueue", "other"]).status.success());
    }
    wait_for("the daemon's fourth slot taken", Duration::from_secs(10), || running("other") == 1);
    let queued = root.http().get("/api/triggeredwebjobs/other/queue").json();
    assert_eq!(queued["count"], 2, "the rest wait for a free slot of the daemon: {queued}");
    assert_eq!(running("wide") + running("other"), 4);
    // Kudu's run on a job at its max_parallel: refused while all are busy (overlap: skip).
    assert_eq!(root.http().post("/api/triggeredwebjobs/wide/run").status, 409);
    std::fs::write(&gate, "").unwrap();
    wait_for("all six done", Duration::from_secs(10), || {
        root.finished_runs("wide").len() == 3 && root.finished_runs("other").len() == 3
    });
    // Side by side, each in a cgroup of its own: the end of one never stops another.
    for job in ["wide", "other"] {
        assert!(root.finished_runs(job).iter().all(|r| r["Status"] == "Success"), "{:?}", root.finished_runs(job));
    }
    daemon.stop();
}

#[test]
fn run_wait_follows_a_queued_request_to_its_run_or_says_it_was_cancelled() {
    let root = Root::new();
    let (gate, wait) = gated(&root);
    root.job("triggered", "line", &[("run.sh", &wait), ("settings.job", r#"{"overlap": "queue"}"#)]);
    let daemon = root.start();
    assert!(root.cli(&["run", "line"]).status.success());
    wait_for("the first running", Duration::from_secs(5), || root.runs("line").len() == 1);
    let spawn_wait = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_webjobs"))
            .args(["--root", root.path().to_str().unwrap(), "--config", root.config_path().to_str().unwrap()])
            .args(["run", "line", "--wait"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let cancelled = spawn_wait();
    let queued = || -> Vec<String> {
        let list: serde_json::Value = serde_json::from_str(&stdout(&root.cli(&["queue", "line", "--json"]))).unwrap();
        list["requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    wait_for("queued", Duration::from_secs(5), || queued().len() == 1);
    let id = queued()[0].clone();
    assert!(root.cli(&["cancel", "line", &id]).status.success());
    let out = cancelled.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled before it ran"));
    let waiting = spawn_wait();
    wait_for("queued again", Duration::from_secs(5), || queued().len() == 1);
    std::fs::write(&gate, "").unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Success"));
    daemon.stop();
}

#[test]
fn a_dedup_window_keeps_a_key_held_after_its_request_ended() {
    let root = Root::new();
    root.job("triggered", "once", &[("run.sh", "echo done\n"), ("settings.job", r#"{"dedup_window": 3600}"#)]);
    let daemon = root.start();
    let out = root.cli(&["enqueue", "once", "--key", "invoice-7"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for("its run", Duration::from_secs(10), || root.finished_runs("once").len() == 1);
    let again = root.http().send("POST", "/api/triggeredwebjobs/once/queue?key=invoice-7", &[], b"");
    assert_eq!(again.status, 409, "held for the window after it ended: {}", again.text());
    assert!(root.cli(&["enqueue", "once", "--key", "invoice-8"]).status.success(), "another key is free");
    daemon.stop();
}

#[test]
fn dead_requests_are_kept_up_to_the_history_size() {
    let root = Root::with_config(serde_json::json!({"history_size": 2}));
    root.job("triggered", "failing", &[("run.sh", "exit 1\n")]);
    let daemon = root.start();
    for _ in 0..3 {
        assert_eq!(root.cli(&["run", "failing", "--wait"]).status.code(), Some(6));
    }
    let dead: serde_json::Value = serde_json::from_str(&stdout(&root.cli(&["dead", "failing", "--json"]))).unwrap();
    assert_eq!(dead["count"], 2, "{dead}");
    let runs: Vec<String> =
        dead["requests"].as_array().unwrap().iter().map(|r| r["runs"][0].as_str().unwrap().to_string()).collect();
    assert_eq!(runs, root.runs("failing").into_iter().rev().take(2).collect::<Vec<_>>(), "the newest two");
    daemon.stop();
}
