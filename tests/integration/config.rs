//! The daemon configuration: refused with every problem listed, reloaded on SIGHUP.

use std::time::Duration;

use crate::helper::*;

#[test]
fn a_bad_config_is_refused_at_start_with_every_problem() {
    let root = Root::with_config(serde_json::json!({"debounce_ms": "soon", "log": {"keep": -1}, "colour": true}));
    let out = std::process::Command::new(BIN)
        .args(["--root", root.path().to_str().unwrap(), "--config", root.config_path().to_str().unwrap(), "serve"])
        .env("WEBJOBS_HISTORY_SIZE", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for needle in [
        "key `debounce_ms`: expected a whole number",
        "key `log.keep`",
        "key `colour`: unknown key",
        "WEBJOBS_HISTORY_SIZE",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("webjobs.json"), "names the file: {err}");
}

#[test]
fn the_same_instance_id_cannot_run_twice_on_one_data_folder() {
    let root = Root::new();
    let _first = root.start();
    let out = root.serve_refused();
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let expected = format!(
        "already serving data folder {} as instance `{}` (pid {})",
        root.path().join("data").display(),
        root.instance,
        _first.pid()
    );
    assert!(text.contains(&expected), "{text}");
    assert!(
        text.contains("stop it first") && text.contains("would run twice"),
        "the advice must not be to start a second daemon: {text}"
    );
    assert_eq!(text.matches("os error").count(), 0, "{text}");
}

#[test]
fn sighup_rereads_the_configuration() {
    let root = Root::new();
    root.continuous("job", "exec sleep 300\n");
    let daemon = root.start();
    wait_for("running", Duration::from_secs(10), || daemon.job_pids("job").len() == 1);
    root.write_config(&serde_json::json!({"debounce_ms": 150, "listen": "127.0.0.1:0", "stopped": true}));
    daemon.signal(libc::SIGHUP);
    wait_for("stopped by WEBJOBS_STOPPED", Duration::from_secs(10), || root.status_is("job", "Stopped"));
    assert_eq!(root.status("job")["Reason"], "WEBJOBS_STOPPED is set");
    // A broken file on SIGHUP keeps the current configuration.
    std::fs::write(root.config_path(), "{ broken").unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("error logged", Duration::from_secs(10), || daemon.stderr().contains("keeping the current configuration"));
    root.write_config(&serde_json::json!({"debounce_ms": 150, "listen": "127.0.0.1:0"}));
    daemon.signal(libc::SIGHUP);
    wait_for("running again", Duration::from_secs(10), || daemon.job_pids("job").len() == 1);
    daemon.stop();
}

#[test]
fn webjobs_stopped_from_the_environment_runs_nothing() {
    let root = Root::new();
    root.continuous("job", "exec sleep 300\n");
    let daemon = Daemon::start(&root, &[("WEBJOBS_STOPPED", "1")]);
    wait_for("stopped", Duration::from_secs(10), || root.status_is("job", "Stopped"));
    assert!(daemon.job_pids("job").is_empty());
    daemon.stop();
}

#[test]
fn the_environment_wins_over_the_config_file() {
    let root = Root::with_config(serde_json::json!({"stopped": false, "history_size": 50}));
    root.continuous("job", "exec sleep 300\n");
    let daemon = Daemon::start(&root, &[("WEBJOBS_STOPPED", "1")]);
    wait_for("stopped by the environment", Duration::from_secs(10), || root.status_is("job", "Stopped"));
    assert_eq!(root.status("job")["Reason"], "WEBJOBS_STOPPED is set");
    daemon.stop();
}

#[test]
fn a_port_in_use_is_one_clear_message_and_no_job_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let root = Root::with_config(serde_json::json!({"listen": addr}));
    let marker = root.path().join("started");
    root.continuous("job", &format!("touch {}\nexec sleep 300\n", marker.display()));
    let out = root.serve_refused();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot listen on {addr}: ")), "names the address: {err}");
    assert!(err.contains("--listen") && err.contains("another program"), "says what to do: {err}");
    assert!(!err.contains(".sock"), "not the socket: {err}");
    assert_eq!(err.matches("in use").count(), 1, "said once: {err}");
    assert!(!marker.exists(), "no job started before the failure");
    assert!(root.log("job").is_empty());
}

#[test]
fn a_relative_root_is_made_absolute_for_the_jobs() {
    let root = Root::new();
    root.job("triggered", "paths", &[("run.sh", "echo \"$WEBJOBS_DATA_PATH|$WEBJOBS_SHUTDOWN_FILE|$WEBJOBS_PATH\"\n")]);
    let mut daemon = std::process::Command::new(BIN)
        .args(["--root", ".", "--config", "webjobs.json", "serve"])
        .current_dir(root.path())
        .env("WEBJOBS_INSTANCE_ID", &root.instance)
        .stderr(std::fs::File::create(root.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    wait_for("daemon", Duration::from_secs(10), || {
        read(&root.path().join("daemon.log")).contains("webjobs is running")
    });
    let out = std::process::Command::new(BIN)
        .args(["--root", ".", "run", "paths", "--wait"])
        .current_dir(root.path())
        .env("WEBJOBS_INSTANCE_ID", &root.instance)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = root.runs("paths").pop().unwrap();
    let line = output_lines(&root.run_log("paths", &id), "INFO").pop().unwrap();
    for path in line.split('|') {
        assert!(path.starts_with('/') && !path.contains("/./"), "not absolute: {line}");
    }
    assert!(line.starts_with(&root.path().join("data/jobs/triggered/paths").display().to_string()), "{line}");
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
}

#[test]
fn a_start_failure_says_its_cause_once() {
    let out = std::process::Command::new(BIN).args(["--root", "/proc/webjobs-nowhere", "serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot create /proc/webjobs-nowhere/jobs"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "the cause once: {err}");
}
