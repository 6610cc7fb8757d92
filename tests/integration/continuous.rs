//! Continuous jobs: start, restart with backoff, disable.job, graceful
//! restart on new files, broken settings keep the last good configuration.

use std::time::Duration;

use crate::helper::*;

const LOOP: &str = "trap 'exit 0' TERM\nwhile true; do echo tick; sleep 0.2; done\n";

#[test]
fn runs_a_job_with_its_environment() {
    let root = Root::new();
    root.job(
        "continuous",
        "env",
        &[
            ("run.sh", "test -d \"$WEBJOBS_DATA_PATH\" || echo 'no data folder' >&2\necho \"NAME=$WEBJOBS_NAME TYPE=$WEBJOBS_TYPE RUN_ID=[$WEBJOBS_RUN_ID] ARGS=[$WEBJOBS_COMMAND_ARGUMENTS] EXTRA=$EXTRA\"\necho \"PATH=$WEBJOBS_PATH\"\necho \"DATA=$WEBJOBS_DATA_PATH\"\necho \"SHUTDOWN=$WEBJOBS_SHUTDOWN_FILE\"\necho \"CWD=$PWD\"\nexec sleep 60\n"),
            ("settings.job", r#"{"env": {"EXTRA": "from settings"}}"#),
        ],
    );
    let daemon = root.start();
    wait_for("env lines", Duration::from_secs(10), || root.log("env").contains("SHUTDOWN="));
    let log = root.log("env");
    let out = output_lines(&log, "INFO");
    assert_eq!(out[0], "NAME=env TYPE=continuous RUN_ID=[] ARGS=[] EXTRA=from settings");
    let work = out[1].trim_start_matches("PATH=");
    assert!(work.contains("/temp/jobs/continuous/env/"), "working copy under temp: {work}");
    assert_eq!(out[4], format!("CWD={work}"));
    assert_eq!(out[2], format!("DATA={}", root.data_dir("continuous", "env").display()));
    assert!(out[3].contains("/temp/JobsShutdown/continuous/env/"));
    assert!(root.status_is("env", "Running"));
    assert!(!log.contains("no data folder"), "WEBJOBS_DATA_PATH exists when the job starts");
    assert!(daemon.stop().success());
}

#[test]
fn crash_loop_backs_off_exponentially_and_never_gives_up() {
    let root = Root::new();
    root.job(
        "continuous",
        "crash",
        &[
            ("run.sh", "echo started\nexit 3\n"),
            ("settings.job", r#"{"restart_delay": 0.1, "max_restart_delay": 0.8}"#),
        ],
    );
    let daemon = root.start();
    wait_for("seven restarts", Duration::from_secs(20), || root.log("crash").matches("restarting in").count() >= 7);
    let log = root.log("crash");
    let delays: Vec<&str> =
        log.lines().filter_map(|l| l.split_once("restarting in ")).map(|(_, d)| d).take(7).collect();
    assert_eq!(delays, ["100ms", "200ms", "400ms", "800ms", "800ms", "800ms", "800ms"]);
    assert!(log.contains("SYS ERROR] process") && log.contains("ended with exit code 3"), "{log}");
    let status = root.status("crash");
    assert!(status["Restarts"].as_u64().unwrap() >= 7);
    assert_eq!(status["LastExit"], "exit code 3");
    daemon.stop();
}

#[test]
fn first_restart_comes_within_a_second_by_default() {
    let root = Root::new();
    root.continuous("quick", "echo up\nexit 1\n");
    let _daemon = root.start();
    wait_for("second start", Duration::from_secs(5), || root.log("quick").matches("started process").count() >= 2);
    let log = root.log("quick");
    let times: Vec<&str> = log.lines().filter(|l| l.contains("started process")).map(|l| &l[1..24]).collect();
    let parse = |t: &str| {
        let ms: Vec<f64> = t[11..23].split(&[':', '.'][..]).map(|x| x.parse().unwrap()).collect();
        ms[0] * 3600.0 + ms[1] * 60.0 + ms[2] + ms[3] / 1000.0
    };
    let gap = parse(times[1]) - parse(times[0]);
    assert!(gap < 1.0, "first restart after {gap}s");
    assert!(log.contains("restarting in 500ms"));
}

#[test]
fn disable_job_round_trip_through_the_cli() {
    let root = Root::new();
    root.continuous("toggle", LOOP);
    let daemon = root.start();
    wait_for("running", Duration::from_secs(10), || root.status_is("toggle", "Running"));
    let out = root.cli(&["stop", "toggle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.job_dir("continuous", "toggle").join("disable.job").exists());
    wait_for("stopped", Duration::from_secs(10), || root.status_is("toggle", "Stopped"));
    wait_for("no process", Duration::from_secs(5), || daemon.job_pids("toggle").is_empty());
    assert_eq!(root.status("toggle")["Reason"], "disable.job is present");
    let list = stdout(&root.cli(&["list"]));
    assert!(list.contains("toggle") && list.contains("Stopped"), "{list}");
    let out = root.cli(&["start", "toggle"]);
    assert!(out.status.success());
    wait_for("running again", Duration::from_secs(10), || root.status_is("toggle", "Running"));
    assert!(!daemon.job_pids("toggle").is_empty());
    let log = root.log("toggle");
    assert!(log.contains("stopping (disable.job is present)"), "{log}");
    assert_eq!(log.matches("started process").count(), 2, "not restarted for the disable.job change itself");
    daemon.stop();
}

#[test]
fn disabled_state_survives_a_daemon_restart() {
    let root = Root::new();
    root.continuous("off", LOOP);
    std::fs::write(root.job_dir("continuous", "off").join("disable.job"), "").unwrap();
    let daemon = root.start();
    wait_for("stopped", Duration::from_secs(10), || root.status_is("off", "Stopped"));
    assert!(daemon.job_pids("off").is_empty());
    daemon.stop();
}

#[test]
fn editing_the_script_restarts_the_job_with_the_new_code() {
    let root = Root::new();
    root.continuous("edit", "trap 'echo bye-v1; exit 0' TERM\nwhile true; do echo v1; sleep 0.1; done\n");
    let daemon = root.start();
    wait_for("v1", Duration::from_secs(10), || root.log("edit").contains("] v1"));
    let old = root.status("edit")["Pid"].as_i64().unwrap() as i32;
    root.continuous("edit", "while true; do echo v2; sleep 0.1; done\n");
    wait_for("v2", Duration::from_secs(10), || root.log("edit").contains("] v2"));
    let log = root.log("edit");
    assert!(log.contains("stopping (job files or settings changed)"), "{log}");
    assert!(log.contains("] bye-v1"), "the old version was stopped gracefully: {log}");
    assert!(!alive(old));
    assert_ne!(root.status("edit")["Pid"].as_i64().unwrap() as i32, old);
    daemon.stop();
}

#[test]
fn corrupt_settings_keep_the_last_good_configuration_running() {
    let root = Root::new();
    root.job("continuous", "keep", &[("run.sh", LOOP), ("settings.job", r#"{"stopping_wait_time": 3}"#)]);
    let daemon = root.start();
    wait_for("running", Duration::from_secs(10), || root.status_is("keep", "Running"));
    let pid = root.status("keep")["Pid"].as_i64().unwrap() as i32;
    root.job("continuous", "keep", &[("settings.job", r#"{"stopping_wait_time": "soon", }"#)]);
    wait_for("error visible", Duration::from_secs(10), || root.status("keep")["Error"].is_string());
    let status = root.status("keep");
    assert_eq!(status["Status"], "Running");
    assert_eq!(status["Pid"].as_i64().unwrap() as i32, pid, "the process was not restarted");
    let error = status["Error"].as_str().unwrap();
    assert!(error.contains("settings.job") && error.contains("invalid JSON"), "{error}");
    assert!(error.contains("keeps its last valid configuration"));
    assert!(root.log("keep").contains("SYS ERROR]"));
    let out = root.cli(&["status", "keep", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("invalid JSON"));
    // Fixed again: the error goes away, and the new settings apply with a restart.
    root.job("continuous", "keep", &[("settings.job", r#"{"stopping_wait_time": 4}"#)]);
    wait_for("error cleared", Duration::from_secs(10), || {
        root.status("keep")["Error"].is_null() && root.status_is("keep", "Running")
    });
    daemon.stop();
}

#[test]
fn an_invalid_job_never_stops_the_others() {
    let root = Root::with_config(serde_json::json!({"interpreters": {"py": "python-missing-here"}}));
    root.job("continuous", "py", &[("run.py", "print('hi')")]);
    root.job("continuous", "win", &[("run.cmd", "echo hi")]);
    root.job("continuous", "badset", &[("run.sh", LOOP), ("settings.job", "{\"is_singleton\": \"yes\"}")]);
    root.continuous("good", LOOP);
    let daemon = root.start();
    wait_for("good runs", Duration::from_secs(10), || root.status_is("good", "Running"));
    wait_for("invalid ones reported", Duration::from_secs(10), || {
        ["py", "win", "badset"].iter().all(|j| root.status_is(j, "Invalid"))
    });
    assert!(
        root.status("py")["Error"]
            .as_str()
            .unwrap()
            .contains("python-missing-here not found on PATH; install it or set interpreters.py")
    );
    assert!(root.log("py").contains("SYS ERROR] python-missing-here not found on PATH"));
    assert!(root.status("win")["Error"].as_str().unwrap().contains("cannot run on Linux"));
    assert!(root.status("badset")["Error"].as_str().unwrap().contains("key `is_singleton`: expected true or false"));
    let list = stdout(&root.cli(&["list"]));
    assert_eq!(list.matches("Invalid").count(), 3, "{list}");
    daemon.stop();
}
