//! Triggered jobs: schedules, on-demand runs with arguments, overlap, history,
//! limits, retries, cancel, and several daemons on one data folder.

use std::time::Duration;

use crate::helper::*;

const ARGV_PY: &str = "import json, os, sys\nprint(json.dumps(sys.argv[1:]))\nprint(os.environ['WEBJOBS_COMMAND_ARGUMENTS'])\nprint(os.environ['WEBJOBS_RUN_ID'])\n";

#[test]
fn arguments_reach_the_script_intact() {
    let root = Root::new();
    root.job("triggered", "argv", &[("run.py", ARGV_PY)]);
    let daemon = root.start();
    let args = ["a b", "it's", "\"quoted\"", "é ü 日本", "$HOME", "back\\slash", "", "--flag=1"];
    let mut cmd = vec!["run", "argv", "--wait", "--"];
    cmd.extend(args);
    let out = root.cli(&cmd);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let id = root.runs("argv").pop().unwrap();
    let lines = output_lines(&root.run_log("argv", &id), "INFO");
    let argv: Vec<String> = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(argv, args);
    // Kudu's one string: words with spaces in double quotes (argv itself is exact).
    assert_eq!(lines[1], r#""a b" it's "quoted" "é ü 日本" $HOME back\slash "" --flag=1"#);
    assert_eq!(lines[2], id);
    let status = root.run_status("argv", &id);
    assert_eq!(status["Status"], "Success");
    assert_eq!(status["ExitCode"], 0);
    assert!(status["Trigger"].as_str().unwrap().starts_with("External - webjobs-cli/"));
    assert!(status["StartTime"].is_string() && status["EndTime"].is_string());
    let log = root.run_log("argv", &id);
    assert!(log.contains("SYS INFO] run ") && log.contains("triggered by External"), "{log}");
    assert!(log.contains("ended: Success (exit code 0) after"), "{log}");
    daemon.stop();
}

#[test]
fn a_second_request_while_a_run_is_active_is_refused() {
    let root = Root::new();
    root.job("triggered", "busy", &[("run.sh", "sleep 30\n")]);
    let daemon = root.start();
    let first = root.cli(&["run", "busy"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = root.cli(&["run", "busy"]);
    assert_eq!(second.status.code(), Some(4));
    assert!(stderr(&second).contains("already running"), "{}", stderr(&second));
    let cancel = root.cli(&["cancel", "busy"]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let id = root.runs("busy")[0].clone();
    assert_eq!(root.run_status("busy", &id)["Status"], "Cancelled");
    assert!(daemon.job_pids("busy").is_empty());
    assert!(root.run_log("busy", &id).contains("stopping (cancelled)"));
    assert_eq!(root.cli(&["cancel", "busy"]).status.code(), Some(4), "nothing left to cancel");
    daemon.stop();
}

#[test]
fn wait_exit_codes_and_follow() {
    let root = Root::new();
    root.job("triggered", "fails", &[("run.sh", "echo about to fail\nexit 3\n")]);
    root.job("triggered", "talks", &[("run.sh", "for i in 1 2 3; do echo \"line $i\"; sleep 0.1; done\n")]);
    let daemon = root.start();
    assert_eq!(root.cli(&["run", "fails", "--wait"]).status.code(), Some(6));
    let id = root.runs("fails")[0].clone();
    let status = root.run_status("fails", &id);
    assert_eq!(status["Error"], "Job failed due to exit code 3");
    let out = root.cli(&["run", "talks", "--follow"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("INFO] line 1") && text.contains("INFO] line 3") && text.contains("ended: Success"),
        "{text}"
    );
    assert_eq!(root.cli(&["run", "missing"]).status.code(), Some(3));
    daemon.stop();
    assert_eq!(root.cli(&["run", "talks"]).status.code(), Some(5), "no daemon");
}

#[test]
fn a_schedule_fires_every_tick_once() {
    let root = Root::new();
    root.job("triggered", "tick", &[("run.sh", "echo tick\n"), ("settings.job", r#"{"schedule": "* * * * * *"}"#)]);
    let daemon = root.start();
    wait_for("four runs", Duration::from_secs(10), || root.finished_runs("tick").len() >= 4);
    daemon.stop();
    let runs = root.finished_runs("tick");
    let seconds: Vec<&str> = runs.iter().map(|r| &r["StartTime"].as_str().unwrap()[..19]).collect();
    let mut unique = seconds.clone();
    unique.dedup();
    assert_eq!(unique, seconds, "one run per tick");
    for r in &runs {
        assert_eq!(r["Trigger"], "Schedule - * * * * * *");
        let ms: u32 = r["StartTime"].as_str().unwrap()[20..23].parse().unwrap();
        assert!(ms < 500, "a run starts right after its tick: {}", r["StartTime"]);
    }
    assert!(read(&root.data_dir("triggered", "tick").join("job_scheduler.log")).contains("next run at"));
}

#[test]
fn overlap_skip_says_so_and_queue_and_replace_do_what_they_say() {
    let root = Root::new();
    root.job("triggered", "skip", &[("run.sh", "sleep 2.5\n"), ("settings.job", r#"{"schedule": "* * * * * *"}"#)]);
    root.job("triggered", "queue", &[("run.sh", "sleep 0.5\n"), ("settings.job", r#"{"overlap": "queue"}"#)]);
    root.job("triggered", "replace", &[("run.sh", "sleep 30\n"), ("settings.job", r#"{"overlap": "replace"}"#)]);
    let daemon = root.start();
    wait_for("skipped ticks", Duration::from_secs(10), || {
        root.runs("skip").first().is_some_and(|id| root.run_log("skip", id).contains("SYS WARN] schedule tick skipped"))
    });
    for _ in 0..3 {
        assert!(root.cli(&["run", "queue"]).status.success());
    }
    wait_for("three queued runs done", Duration::from_secs(10), || root.finished_runs("queue").len() == 3);
    assert!(root.finished_runs("queue").iter().all(|r| r["Status"] == "Success"));
    assert!(root.cli(&["run", "replace"]).status.success());
    wait_for("first running", Duration::from_secs(5), || root.runs("replace").len() == 1);
    assert!(root.cli(&["run", "replace"]).status.success());
    wait_for("replaced", Duration::from_secs(10), || root.finished_runs("replace").len() == 1);
    let first = root.runs("replace")[0].clone();
    assert_eq!(root.run_status("replace", &first)["Status"], "Cancelled");
    assert!(root.run_status("replace", &first)["Error"].as_str().unwrap().contains("replaced"));
    daemon.stop();
}

#[test]
fn history_keeps_the_newest_runs() {
    let root = Root::with_config(serde_json::json!({"history_size": 3}));
    root.job("triggered", "keep", &[("run.sh", "echo hi\n")]);
    let daemon = root.start();
    let mut ids = Vec::new();
    for _ in 0..5 {
        assert!(root.cli(&["run", "keep", "--wait"]).status.success());
        ids.push(root.runs("keep").pop().unwrap());
    }
    assert_eq!(root.runs("keep"), ids[2..].to_vec());
    let out = root.cli(&["history", "keep", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["id"], ids[4], "newest first");
    for field in
        ["id", "name", "status", "start_time", "end_time", "duration", "output_url", "url", "job_name", "trigger"]
    {
        assert!(runs[0].get(field).is_some(), "missing {field}");
    }
    daemon.stop();
}

#[test]
fn timeout_and_idle_timeout_end_runs_and_say_why() {
    let root = Root::new();
    root.job(
        "triggered",
        "long",
        &[("run.sh", "echo working\nsleep 30\n"), ("settings.job", r#"{"timeout": 1, "idle_timeout": 60}"#)],
    );
    root.job("triggered", "idle", &[("run.sh", "sleep 30\n"), ("settings.job", r#"{"idle_timeout": 1}"#)]);
    root.job("triggered", "busy", &[("run.py", "while True: pass\n"), ("settings.job", r#"{"idle_timeout": 1}"#)]);
    let daemon = root.start();
    assert_eq!(root.cli(&["run", "long", "--wait"]).status.code(), Some(6));
    let id = root.runs("long")[0].clone();
    assert!(
        root.run_status("long", &id)["Error"].as_str().unwrap().starts_with("timeout: the run took longer than 1s")
    );
    assert!(root.run_log("long", &id).contains("stopping (timeout"));
    // A silent job that uses CPU is not idle: started first, it outlives one
    // that is idle for the same idle_timeout.
    assert!(root.cli(&["run", "busy"]).status.success());
    assert_eq!(root.cli(&["run", "idle", "--wait"]).status.code(), Some(6));
    let id = root.runs("idle")[0].clone();
    assert!(
        root.run_status("idle", &id)["Error"]
            .as_str()
            .unwrap()
            .contains("idle_timeout: no output and no CPU time for 1s")
    );
    let id = root.runs("busy")[0].clone();
    assert_eq!(root.run_status("busy", &id)["Status"], "Running");
    root.cli(&["cancel", "busy"]);
    daemon.stop();
}

#[test]
fn failed_runs_are_retried_and_name_the_run_they_retry() {
    let root = Root::new();
    root.job(
        "triggered",
        "flaky",
        &[("run.sh", "exit 1\n"), ("settings.job", r#"{"retries": 2, "retry_delay": 0.2}"#)],
    );
    let daemon = root.start();
    root.cli(&["run", "flaky"]);
    wait_for("three runs", Duration::from_secs(10), || root.finished_runs("flaky").len() == 3);
    let runs = root.runs("flaky");
    let triggers: Vec<String> =
        runs.iter().map(|id| root.run_status("flaky", id)["Trigger"].as_str().unwrap().to_string()).collect();
    assert!(triggers[0].starts_with("External"));
    assert_eq!(triggers[1], format!("Retry 1/2 of {}", runs[0]));
    assert_eq!(triggers[2], format!("Retry 2/2 of {}", runs[1]));
    // Answered by the job's actor after it has handled the third run's end.
    assert_eq!(root.http().post("/api/triggeredwebjobs/flaky/cancel").status, 409);
    let log = read(&root.data_dir("triggered", "flaky").join("job_scheduler.log"));
    assert_eq!(log.matches("] retry ").count(), 2, "no more than `retries`: {log}");
    assert_eq!(root.runs("flaky").len(), 3);
    daemon.stop();
}

#[test]
fn a_run_lost_with_a_sigkilled_daemon_becomes_aborted_and_leaves_no_orphan() {
    let root = Root::new();
    root.job("triggered", "victim", &[("run.sh", "sleep 300 &\nwait\n")]);
    let first = root.start();
    assert!(root.cli(&["run", "victim"]).status.success());
    wait_for("running", Duration::from_secs(5), || first.job_pids("victim").len() == 2);
    let pids = first.job_pids("victim");
    let _leftovers = first.kill9();
    let second = root.start();
    wait_for("orphans gone", Duration::from_secs(10), || pids.iter().all(|p| !alive(*p)));
    let id = root.runs("victim")[0].clone();
    wait_for("aborted", Duration::from_secs(5), || root.run_status("victim", &id)["Status"] == "Aborted");
    assert!(root.run_status("victim", &id)["Error"].as_str().unwrap().contains("stopped before the run ended"));
    assert!(root.cli(&["run", "victim"]).status.success(), "the job runs again");
    second.stop();
}

#[test]
fn missed_ticks_run_once_after_downtime_when_recent() {
    let root = Root::new();
    root.job("triggered", "catch", &[("run.sh", "echo ran\n"), ("settings.job", r#"{"schedule": "*/2 * * * * *"}"#)]);
    root.job(
        "triggered",
        "nocatch",
        &[("run.sh", "echo ran\n"), ("settings.job", r#"{"schedule": "*/2 * * * * *", "catch_up": "none"}"#)],
    );
    // As a daemon that stopped 10 s ago leaves it: the last tick claimed then.
    let last = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(10);
    for job in ["catch", "nocatch"] {
        let dir = root.data_dir("triggered", job);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("schedule.json"), format!("{{\"LastTick\": \"{last}\"}}")).unwrap();
    }
    let daemon = root.start();
    // A run's folder appears a moment before its status is written.
    let caught_up = || {
        root.runs("catch")
            .iter()
            .any(|id| root.run_status("catch", id)["Trigger"].as_str().is_some_and(|t| t.contains("(missed tick at")))
    };
    wait_for("the catch-up run", Duration::from_secs(5), caught_up);
    let log = read(&root.data_dir("triggered", "nocatch").join("job_scheduler.log"));
    // Down for 10 s on a 2 s schedule: four or five ticks were missed.
    let missed: u32 =
        log.split("SYS WARN] missed ").nth(1).and_then(|t| t.split(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(missed >= 4, "{log}");
    assert!(log.contains("not run (catch_up)"));
    for id in root.runs("nocatch") {
        let trigger = root.run_status("nocatch", &id)["Trigger"].to_string();
        assert!(!trigger.contains("missed tick"), "no catch-up run for catch_up: none: {trigger}");
    }
    daemon.stop();
}

#[test]
fn two_daemons_never_run_a_job_twice() {
    let root = Root::new();
    root.job(
        "triggered",
        "shared",
        &[("run.sh", "echo $WEBJOBS_RUN_ID\nsleep 0.3\n"), ("settings.job", r#"{"schedule": "* * * * * *"}"#)],
    );
    let a = Daemon::start_as(&root, "da", &[]);
    let b = Daemon::start_as(&root, "db", &[]);
    wait_for("five runs", Duration::from_secs(15), || root.finished_runs("shared").len() >= 5);
    a.stop();
    b.stop();
    let runs = root.finished_runs("shared");
    let seconds: Vec<&str> = runs.iter().map(|r| &r["StartTime"].as_str().unwrap()[..19]).collect();
    let mut unique = seconds.clone();
    unique.dedup();
    assert_eq!(unique, seconds, "each tick ran once across both daemons");
    let instances: std::collections::BTreeSet<&str> = runs.iter().map(|r| r["Instance"].as_str().unwrap()).collect();
    assert!(!instances.is_empty());
}

#[test]
fn on_demand_runs_are_exclusive_across_daemons() {
    let root = Root::new();
    root.job("triggered", "excl", &[("run.sh", "sleep 30\n")]);
    let a = Daemon::start_as(&root, "ea", &[]);
    let b = Daemon::start_as(&root, "eb", &[]);
    let first = root.cli_as("ea", &["run", "excl"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = root.cli_as("eb", &["run", "excl"]);
    assert_eq!(second.status.code(), Some(4), "{}", stderr(&second));
    assert!(stderr(&second).contains("a run is active on instance ea"), "{}", stderr(&second));
    a.stop();
    b.stop();
}

#[test]
fn webjobs_disable_schedule_stops_ticks_but_not_on_demand_runs() {
    let root = Root::new();
    root.job("triggered", "quiet", &[("run.sh", "echo hi\n"), ("settings.job", r#"{"schedule": "* * * * * *"}"#)]);
    let daemon = Daemon::start(&root, &[("WEBJOBS_DISABLE_SCHEDULE", "true")]);
    let http = root.http();
    wait_for("loaded", Duration::from_secs(10), || http.get("/api/triggeredwebjobs/quiet").status == 200);
    let job = http.get("/api/triggeredwebjobs/quiet").json();
    assert!(job["next_run"].is_null(), "no tick is armed: {job}");
    assert!(root.runs("quiet").is_empty());
    assert!(root.cli(&["run", "quiet", "--wait"]).status.success());
    daemon.stop();
}

#[test]
fn schedule_command_prints_rfc3339_and_rejects_bad_expressions() {
    let root = Root::new();
    let out = root.cli(&[
        "schedule",
        "0 30 9 * * 1-5",
        "--from",
        "2026-11-20T10:00:00Z",
        "--count",
        "3",
        "--timezone",
        "America/New_York",
    ]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "2026-11-20T09:30:00-05:00\n2026-11-23T09:30:00-05:00\n2026-11-24T09:30:00-05:00\n");
    let out = root.cli(&["schedule", "0 0 0 31 2 *"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("can never fire"), "{}", stderr(&out));
    let out = root.cli(&["schedule", "0 0 12 * * MON", "--timezone", "Mars/Olympus"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn run_mode_on_demand_ignores_the_schedule() {
    let root = Root::new();
    root.job(
        "triggered",
        "manual",
        &[("run.sh", "echo hi\n"), ("settings.job", r#"{"schedule": "* * * * * *", "run_mode": "on_demand"}"#)],
    );
    // A scheduled job beside it shows the ticks come and go.
    root.job("triggered", "ticking", &[("run.sh", "echo hi\n"), ("settings.job", r#"{"schedule": "* * * * * *"}"#)]);
    let daemon = root.start();
    wait_for("two ticks", Duration::from_secs(10), || root.finished_runs("ticking").len() >= 2);
    assert!(root.runs("manual").is_empty(), "no tick fired");
    assert!(root.http().get("/api/triggeredwebjobs/manual").json()["next_run"].is_null());
    assert!(root.cli(&["run", "manual", "--wait"]).status.success());
    daemon.stop();
}

#[test]
fn a_stopped_job_keeps_its_retry_queued_until_it_is_started() {
    let root = Root::new();
    let release = root.path().join("release");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done\nexit 1\n", release.display());
    root.job("triggered", "flaky", &[("run.sh", &script), ("settings.job", r#"{"retries": 1, "retry_delay": 0}"#)]);
    let daemon = root.start();
    let out = root.cli(&["run", "flaky"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = root.cli(&["stop", "flaky"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(&release, "").unwrap();
    let scheduler = root.data_dir("triggered", "flaky").join("job_scheduler.log");
    wait_for("the failed run's end", Duration::from_secs(10), || {
        read(&scheduler).contains("it waits until the job is started")
    });
    assert_eq!(root.runs("flaky").len(), 1);
    assert_eq!(root.finished_runs("flaky")[0]["Status"], "Failed");
    let queued = root.http().get("/api/triggeredwebjobs/flaky/queue").json();
    assert_eq!(queued["count"], 1, "the retry is kept: {queued}");
    let out = root.cli(&["start", "flaky"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_for("the retry ran", Duration::from_secs(10), || root.finished_runs("flaky").len() == 2);
    daemon.stop();
}

#[test]
fn a_job_whose_actor_cannot_start_says_why_and_recovers() {
    let root = Root::new();
    root.job("triggered", "broken", &[("run.sh", "echo ran\n")]);
    root.job("triggered", "fine", &[("run.sh", "echo fine\n")]);
    // A folder where the scheduler log must go: the job's actor cannot open it.
    let blocker = root.data_dir("triggered", "broken").join("job_scheduler.log");
    std::fs::create_dir_all(&blocker).unwrap();
    let daemon = root.start();
    let http = root.http();
    wait_for("the failure shown", Duration::from_secs(10), || {
        http.get("/api/triggeredwebjobs/broken").json()["status"] == "Invalid"
    });
    let job = http.get("/api/triggeredwebjobs/broken").json();
    let error = job["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("cannot open the scheduler log") && error.contains("started again in"), "{job}");
    let run = http.post("/api/triggeredwebjobs/broken/run");
    assert_ne!(run.status, 404, "the job exists; it cannot run: {}", run.text());
    assert!(run.text().contains("cannot open the scheduler log"), "{}", run.text());
    assert!(daemon.stderr().contains("job=triggered/broken"), "attributed to its job:\n{}", daemon.stderr());
    // Every other job runs meanwhile.
    assert!(root.cli(&["run", "fine", "--wait"]).status.success());
    // Once the cause is gone, the job is started again by itself.
    std::fs::remove_dir(&blocker).unwrap();
    wait_for("the actor started again", Duration::from_secs(10), || {
        http.get("/api/triggeredwebjobs/broken").json()["status"] == "Ready"
    });
    let out = root.cli(&["run", "broken", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    daemon.stop();
}
