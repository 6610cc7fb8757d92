//! Containment: a run's processes cannot escape the stop protocol, whatever
//! they do to their process group, session or environment (a cgroup per run),
//! and what a SIGKILLed daemon left is ended at its next start.

use std::time::Duration;

use crate::helper::*;

/// A job that scatters TERM-deaf processes: one in its own process group
/// (job control), 30 in their own sessions, one with a cleared environment
/// and a new session, and one from Python with `env={}` and a new session.
/// Each `sleep` has a distinct length so the test can find them by cmdline.
fn scatter(tag: u32) -> String {
    format!(
        "set -m\n\
         ( trap '' TERM; exec sleep {tag}1 ) &\n\
         for i in $(seq 1 30); do setsid sh -c \"trap '' TERM; exec sleep {tag}2\" & done\n\
         env -i setsid sh -c \"trap '' TERM; exec sleep {tag}3\" &\n\
         python3 -c \"import subprocess; subprocess.Popen(['sleep', '{tag}4'], env={{}}, start_new_session=True)\"\n\
         echo scattered\n\
         while true; do sleep 0.1; done\n"
    )
}

/// Live processes whose command line is `sleep <arg>` with `arg` starting with `tag`.
fn sleepers(tag: u32) -> Vec<i32> {
    let prefix = format!("sleep\0{tag}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(prefix.as_bytes())) && alive(*pid)
        })
        .collect()
}

fn kill_all(pids: &[i32]) {
    for pid in pids {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
}

/// A tag unique to this test process and call (sleep lengths stay plausible).
fn tag(n: u32) -> u32 {
    900 + (std::process::id() % 90) * 10 + n
}

#[test]
fn nothing_a_run_started_survives_a_stop() {
    let root = Root::new();
    let t = tag(1);
    root.job("continuous", "scatter", &[("run.sh", &scatter(t)), ("settings.job", r#"{"stopping_wait_time": 1}"#)]);
    let daemon = root.start();
    let health = root.http().get("/health").json();
    assert_eq!(health["containment"], "cgroup", "this machine has a writable cgroup v2: {health}");
    wait_for("33 scattered processes", Duration::from_secs(20), || sleepers(t).len() == 33);
    let out = root.cli(&["stop", "scatter"]);
    let left = sleepers(t);
    kill_all(&left);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(left.is_empty(), "processes left after the stop: {left:?}");
    let log = root.log("scatter");
    assert!(log.contains("sending SIGKILL to every process of cgroup continuous.scatter"), "{log}");
    let status = stdout(&root.cli(&["status", "scatter"]));
    assert!(status.contains("contained: cgroup v2"), "{status}");
    daemon.stop();
}

#[test]
fn what_a_killed_daemon_left_is_ended_at_its_next_start() {
    let root = Root::new();
    let t = tag(2);
    root.job("continuous", "scatter", &[("run.sh", &scatter(t)), ("settings.job", r#"{"stopping_wait_time": 1}"#)]);
    let first = root.start();
    wait_for("33 scattered processes", Duration::from_secs(20), || sleepers(t).len() == 33);
    let before = sleepers(t);
    let _guard = first.kill9();
    assert!(before.iter().all(|p| alive(*p)), "they outlive the SIGKILLed daemon");
    // The job is turned off so that the new start runs nothing new of it.
    std::fs::write(root.job_dir("continuous", "scatter").join("disable.job"), "").unwrap();
    let second = root.start();
    let left = sleepers(t);
    kill_all(&left);
    assert!(left.is_empty(), "left after the restart: {left:?} (before: {})", before.len());
    assert!(
        root.log("scatter")
            .contains("left running by a previous daemon that did not stop cleanly, in the cgroup of its run")
    );
    second.stop();
}

#[test]
fn a_run_reports_its_cpu_time() {
    let root = Root::new();
    let burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\nprint('burnt')\n";
    root.job("triggered", "burn", &[("run.py", burn)]);
    let daemon = root.start();
    let http = root.http();
    let id = http.post("/api/triggeredwebjobs/burn/run").json()["id"].as_str().unwrap().to_string();
    let run = http.get(&format!("/api/triggeredwebjobs/burn/history/{id}?wait=20")).json();
    assert_eq!(run["status"], "Success", "{run}");
    let cpu = run["cpu_time_ms"].as_u64().expect("CPU time from the run's cgroup");
    assert!((350..5000).contains(&cpu), "cpu_time_ms {cpu}");
    assert!(root.run_status("burn", &id)["CpuMs"].as_u64().is_some());
    let metrics = http.get("/metrics").text();
    assert!(metrics.contains("webjobs_cpu_seconds_total{type=\"triggered\",job=\"burn\"}"), "{metrics}");
    daemon.stop();
}

#[test]
fn a_limit_the_machine_cannot_apply_is_a_clear_error() {
    let root = Root::new();
    root.job("triggered", "limited", &[("run.sh", "echo hi\n"), ("settings.job", r#"{"tasks_max": 8}"#)]);
    let daemon = root.start();
    let http = root.http();
    let detail = http.get("/health").json()["containment_detail"].as_str().unwrap().to_string();
    let id = http.post("/api/triggeredwebjobs/limited/run").json()["id"].as_str().unwrap().to_string();
    let run = http.get(&format!("/api/triggeredwebjobs/limited/history/{id}?wait=20")).json();
    if detail.contains("pids") {
        assert_eq!(run["status"], "Success", "the limit applies where the controller is: {run}");
    } else {
        assert_eq!(run["status"], "Failed", "{run}");
        let error = run["error"].as_str().unwrap();
        assert!(error.contains("tasks_max needs the cgroup v2 `pids` controller"), "{error}");
    }
    daemon.stop();
}

#[test]
fn without_cgroups_escapees_that_keep_the_marker_are_killed_too() {
    let root = Root::with_config(serde_json::json!({"cgroups": false}));
    let t = tag(3);
    let script = format!("set -m\n( trap '' TERM; exec sleep {t}1 ) &\necho started\nwhile true; do sleep 0.1; done\n");
    root.job("continuous", "deaf", &[("run.sh", &script), ("settings.job", r#"{"stopping_wait_time": 1}"#)]);
    let daemon = root.start();
    let health = root.http().get("/health").json();
    assert_eq!(health["containment"], "process-group");
    assert!(health["containment_detail"].as_str().unwrap().contains("turned off in the configuration"));
    wait_for("the TERM-deaf child", Duration::from_secs(20), || sleepers(t).len() == 1);
    let out = root.cli(&["stop", "deaf"]);
    let left = sleepers(t);
    kill_all(&left);
    assert_eq!(out.status.code(), Some(0));
    assert!(left.is_empty(), "a TERM-deaf child in its own group got SIGKILL too: {left:?}");
    daemon.stop();
}

#[test]
fn descriptors_the_daemon_inherited_do_not_reach_jobs() {
    let root = Root::new();
    let fds = "import os\nprint('fds', sorted(int(f) for f in os.listdir('/proc/self/fd')))\n";
    root.job("triggered", "fds", &[("run.py", fds)]);
    // The daemon starts with fd 7 open (as a careless parent would leave it).
    let stderr_path = root.path().join("daemon.log");
    let mut daemon = std::process::Command::new("bash")
        .arg("-c")
        .arg("exec 7</etc/hostname; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["--root", root.path().to_str().unwrap(), "--config", root.config_path().to_str().unwrap(), "serve"])
        .env("WEBJOBS_INSTANCE_ID", &root.instance)
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    wait_for("daemon", Duration::from_secs(10), || read(&stderr_path).contains("webjobs is running"));
    let daemon_fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", daemon.id()))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert!(daemon_fds.contains(&"7".to_string()), "the daemon has fd 7: {daemon_fds:?}");
    let out = root.cli(&["run", "fds", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = root.runs("fds").pop().unwrap();
    let line = output_lines(&root.run_log("fds", &id), "INFO").pop().unwrap();
    // 0-2, and the folder listdir itself opens.
    assert_eq!(line, "fds [0, 1, 2, 3]", "the job sees only its own descriptors");
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
}
