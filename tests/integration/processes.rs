//! The stop protocol and process trees: SIGTERM then SIGKILL to the whole
//! group, daemonizing grandchildren, leftovers after a daemon crash.

use std::time::{Duration, Instant};

use crate::helper::*;

#[test]
fn a_job_that_ignores_sigterm_is_killed_after_stopping_wait_time() {
    let root = Root::new();
    root.job(
        "continuous",
        "stubborn",
        &[
            ("run.sh", "trap 'echo got TERM, ignoring' TERM\nwhile true; do sleep 0.1; done\n"),
            ("settings.job", r#"{"stopping_wait_time": 1}"#),
        ],
    );
    let daemon = root.start();
    wait_for("running", Duration::from_secs(10), || root.status_is("stubborn", "Running"));
    let started = Instant::now();
    root.cli(&["stop", "stubborn"]);
    wait_for("gone", Duration::from_secs(15), || root.status_is("stubborn", "Stopped"));
    let took = started.elapsed();
    assert!(daemon.job_pids("stubborn").is_empty());
    let log = root.log("stubborn");
    assert!(log.contains("] got TERM, ignoring"), "{log}");
    assert!(log.contains("SYS WARN] still running after 1s; sending SIGKILL to "), "{log}");
    assert!(log.contains("stopped (signal SIGKILL)"), "{log}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(6), "stop took {took:?}");
    daemon.stop();
}

#[test]
fn a_double_forked_daemonized_grandchild_is_stopped_too() {
    let root = Root::new();
    let script = r#"
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(os.environ["WEBJOBS_DATA_PATH"] + "/grandchild.pid", "w") as f:
            f.write(str(os.getpid()))
        while True:
            time.sleep(1)
    os._exit(0)
print("parent keeps running", flush=True)
while True:
    time.sleep(1)
"#;
    root.job("continuous", "forker", &[("run.py", script)]);
    let daemon = root.start();
    let pid_file = root.data_dir("continuous", "forker").join("grandchild.pid");
    wait_for("grandchild", Duration::from_secs(10), || pid_file.exists() && !read(&pid_file).is_empty());
    let grandchild: i32 = read(&pid_file).trim().parse().unwrap();
    assert!(alive(grandchild));
    let sid = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap();
    assert!(!sid.is_empty());
    root.cli(&["stop", "forker"]);
    wait_for("stopped", Duration::from_secs(15), || root.status_is("forker", "Stopped"));
    wait_for("grandchild gone", Duration::from_secs(5), || !alive(grandchild));
    assert!(daemon.job_pids("forker").is_empty(), "{:?}", daemon.job_pids("forker"));
    daemon.stop();
}

#[test]
fn leftovers_of_a_job_whose_main_process_exited_are_stopped_before_a_restart() {
    let root = Root::new();
    root.job(
        "continuous",
        "leaky",
        &[
            ("run.sh", "sleep 300 &\necho \"$!\" > \"$WEBJOBS_DATA_PATH/bg.pid\"\nsleep 0.3\nexit 0\n"),
            ("settings.job", r#"{"restart_delay": 30}"#),
        ],
    );
    let daemon = root.start();
    wait_for("pending restart", Duration::from_secs(10), || root.status_is("leaky", "PendingRestart"));
    let bg: i32 = read(&root.data_dir("continuous", "leaky").join("bg.pid"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid written; log:\n{}\nstatus: {}", root.log("leaky"), root.status("leaky")));
    wait_for("background process gone", Duration::from_secs(10), || !alive(bg));
    assert!(
        root.log("leaky")
            .contains("the main process exited but other processes of the job are still running; stopping them")
    );
    daemon.stop();
}

#[test]
fn a_clean_daemon_stop_stops_every_job_and_exits_zero() {
    let root = Root::new();
    root.continuous("a", "trap 'exit 0' TERM\nsleep 300 & wait\n");
    root.job("continuous", "b", &[("run.py", "import time\nwhile True: time.sleep(1)\n")]);
    root.job("continuous", "c", &[("app.js", "setInterval(() => console.log('node tick'), 100);\n")]);
    let daemon = root.start();
    wait_for("all running", Duration::from_secs(10), || ["a", "b", "c"].iter().all(|j| root.status_is(j, "Running")));
    wait_for("node output", Duration::from_secs(10), || root.log("c").contains("] node tick"));
    let prefix = daemon.marker_prefix.clone();
    assert!(marked_pids(&prefix, "").len() >= 3);
    let status = daemon.stop();
    assert!(status.success(), "exit status {status}");
    assert!(marked_pids(&prefix, "").is_empty(), "no job process outlives the daemon");
    for job in ["a", "b", "c"] {
        assert!(root.status_is(job, "Stopped"), "{job}: {}", root.status(job));
    }
}

#[test]
fn after_a_daemon_sigkill_the_next_start_ends_what_was_left() {
    let root = Root::new();
    root.continuous("orphan", "sleep 300 &\nwait\n");
    let first = root.start();
    wait_for("running", Duration::from_secs(10), || first.job_pids("orphan").len() == 2);
    let left = first.job_pids("orphan");
    let prefix = first.marker_prefix.clone();
    let _leftovers = first.kill9();
    assert!(left.iter().all(|p| alive(*p)), "job processes survive a SIGKILLed daemon");
    // An unrelated process that does not carry the marker is never touched.
    let mut bystander = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    let second = root.start();
    wait_for("leftovers gone", Duration::from_secs(10), || left.iter().all(|p| !alive(*p)));
    assert!(bystander.try_wait().unwrap().is_none(), "the unrelated process still runs");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    wait_for("running again", Duration::from_secs(10), || second.job_pids("orphan").len() == 2);
    assert!(root.log("orphan").contains("left running by a previous daemon"));
    assert_eq!(marked_pids(&prefix, "orphan").len(), 2, "exactly the new run");
    second.stop();
}

#[test]
fn jobs_start_with_no_blocked_signals_even_if_the_daemon_inherited_some() {
    let root = Root::new();
    root.continuous("mask", "grep -E '^Sig(Blk|Ign)' /proc/self/status\nexec sleep 300\n");
    // Start the daemon from a parent that blocks and ignores SIGTERM.
    let wrapper = format!(
        "import os, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM, signal.SIGUSR1}})\nos.execv({:?}, [{:?}, '--root', {:?}, '--config', {:?}, 'serve'])\n",
        BIN,
        BIN,
        root.path().display().to_string(),
        root.config_path().display().to_string()
    );
    let log_path = root.path().join("wrapped.log");
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(wrapper)
        .env("WEBJOBS_INSTANCE_ID", &root.instance)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for("mask line", Duration::from_secs(10), || root.log("mask").contains("SigBlk"));
    let log = root.log("mask");
    assert!(log.contains("] SigBlk:\t0000000000000000"), "{log}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // SIGTERM is blocked in the daemon's first thread but handled: it must still stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "daemon did not stop: {}", read(&log_path));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(marked_pids(&format!("{}.", root.instance), "mask").is_empty());
}

#[test]
fn a_spawn_failure_shows_in_the_status_and_the_api() {
    let root = Root::new();
    let dir = root.job("continuous", "badexec", &[("run", "this is not a program\n")]);
    std::fs::set_permissions(dir.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let daemon = root.start();
    wait_for("the failure in the status", Duration::from_secs(10), || {
        root.status("badexec")["Error"].as_str().is_some_and(|e| e.contains("failed to start: Exec format error"))
    });
    let job = root.http().get("/api/continuouswebjobs/badexec").json();
    assert!(job["error"].as_str().unwrap().contains("Exec format error"), "{job}");
    daemon.stop();
}

#[test]
fn job_folders_that_are_broken_links_are_listed_with_the_reason() {
    let root = Root::new();
    let kind = root.path().join("jobs/continuous");
    std::os::unix::fs::symlink(root.path().join("nowhere"), kind.join("dangling")).unwrap();
    std::os::unix::fs::symlink(kind.join("loop2"), kind.join("loop1")).unwrap();
    std::os::unix::fs::symlink(kind.join("loop1"), kind.join("loop2")).unwrap();
    let out = root.cli(&["validate", "--json"]);
    let text = stdout(&out);
    assert!(text.contains("dangling") && text.contains("a link to nothing"), "{text}");
    assert!(text.contains("loop1") && text.contains("a loop of links"), "{text}");
    let daemon = root.start();
    let jobs = root.http().get("/api/continuouswebjobs").json();
    let names: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dangling", "loop1", "loop2"]);
    assert!(jobs[0]["error"].as_str().unwrap().contains("a link to nothing"), "{jobs}");
    assert_eq!(jobs[0]["status"], "Invalid");
    daemon.stop();
}

const DEAF: &str = "trap 'echo got TERM, ignoring' TERM\nwhile true; do sleep 0.1; done\n";

#[test]
fn a_job_being_stopped_still_answers_and_a_shutdown_cuts_its_grace_short() {
    let root = Root::new();
    root.job("continuous", "deaf", &[("run.sh", DEAF), ("settings.job", r#"{"stopping_wait_time": 60}"#)]);
    let daemon = root.start();
    wait_for("running", Duration::from_secs(10), || root.status_is("deaf", "Running"));
    // Stopped by hand (not through the API): the stop has a minute of grace.
    std::fs::write(root.job_dir("continuous", "deaf").join("disable.job"), "").unwrap();
    wait_for("stopping", Duration::from_secs(10), || root.status_is("deaf", "Stopping"));
    // A write to the job is applied and answered through its actor, mid-stop.
    let asked = Instant::now();
    let r = root.http().send(
        "PUT",
        "/api/continuouswebjobs/deaf/settings",
        &[("Content-Type", "application/json")],
        br#"{"stopping_wait_time": 60, "is_singleton": false}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(asked.elapsed() < Duration::from_secs(5), "answered after {:?}", asked.elapsed());
    // The daemon's stop does not wait out the rest of the minute.
    let prefix = daemon.marker_prefix.clone();
    let stopped = Instant::now();
    let status = daemon.stop();
    assert!(status.success());
    assert!(stopped.elapsed() < Duration::from_secs(10), "the daemon took {:?} to stop", stopped.elapsed());
    let log = root.log("deaf");
    assert!(log.contains("the daemon is stopping: sending SIGKILL to every process of the run now"), "{log}");
    assert!(marked_pids(&prefix, "deaf").is_empty());
}

#[test]
fn a_run_being_cancelled_still_answers_requests() {
    let root = Root::new();
    root.job("triggered", "slow", &[("run.sh", DEAF), ("settings.job", r#"{"stopping_wait_time": 3}"#)]);
    let daemon = root.start();
    let http = root.http();
    assert!(root.cli(&["run", "slow"]).status.success());
    wait_for("the run's trap set", Duration::from_secs(10), || {
        root.runs("slow").first().is_some_and(|id| root.run_status("slow", id)["Status"] == "Running")
    });
    let canceller = {
        let http = root.http();
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = http.post("/api/triggeredwebjobs/slow/cancel");
            (r.status, started.elapsed())
        })
    };
    wait_for("the stop under way", Duration::from_secs(10), || {
        root.run_log("slow", &root.runs("slow")[0]).contains("stopping (cancelled)")
    });
    let asked = Instant::now();
    let second = http.post("/api/triggeredwebjobs/slow/run");
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(http.get("/api/triggeredwebjobs/slow").status == 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "answered after {:?} while the run was being stopped",
        asked.elapsed()
    );
    let (status, took) = canceller.join().unwrap();
    assert!(status < 300, "cancel answered {status}");
    assert!(took >= Duration::from_secs(2), "the cancel is answered once the run is over ({took:?})");
    let id = root.runs("slow")[0].clone();
    assert_eq!(root.run_status("slow", &id)["Status"], "Cancelled");
    daemon.stop();
}

#[test]
fn a_second_stop_signal_kills_every_job_at_once() {
    let root = Root::new();
    root.job("continuous", "deaf", &[("run.sh", DEAF), ("settings.job", r#"{"stopping_wait_time": 60}"#)]);
    let mut daemon = root.start();
    wait_for("running", Duration::from_secs(10), || root.status_is("deaf", "Running"));
    daemon.signal(libc::SIGTERM);
    wait_for("stopping", Duration::from_secs(10), || root.log("deaf").contains("stopping (daemon stopping)"));
    let second = Instant::now();
    daemon.signal(libc::SIGINT);
    let status = daemon.wait(Duration::from_secs(10));
    assert!(status.success());
    assert!(second.elapsed() < Duration::from_secs(5), "took {:?}", second.elapsed());
    assert!(daemon.stderr().contains("second stop signal: sending SIGKILL"), "{}", daemon.stderr());
    assert!(daemon.job_pids("deaf").is_empty());
}

#[test]
fn a_daemon_stop_gives_a_triggered_run_its_grace() {
    let root = Root::new();
    root.job(
        "triggered",
        "polite",
        &[
            (
                "run.sh",
                "trap 'echo got TERM; sleep 0.3; echo cleaned up; exit 0' TERM\necho ready\nwhile true; do sleep 0.05; done\n",
            ),
            ("settings.job", r#"{"stopping_wait_time": 10}"#),
        ],
    );
    let daemon = root.start();
    assert!(root.cli(&["run", "polite"]).status.success());
    // Its trap is set once it said so.
    wait_for("running", Duration::from_secs(10), || {
        root.runs("polite").first().is_some_and(|id| root.run_log("polite", id).contains("] ready"))
    });
    let started = Instant::now();
    assert!(daemon.stop().success());
    let took = started.elapsed();
    let id = root.runs("polite")[0].clone();
    let log = root.run_log("polite", &id);
    assert!(log.contains("] cleaned up"), "the run got its grace: {log}");
    assert!(!log.contains("SIGKILL"), "{log}");
    assert_eq!(root.run_status("polite", &id)["Status"], "Aborted");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
