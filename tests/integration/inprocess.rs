//! The in-process tier: the daemon's library entry point, `daemon::run`, on a
//! temporary folder inside the test (no binary, no signals): started, told to
//! stop, and awaited like any future.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use webjobs::config::{Config, Sources};

use crate::helper::*;

/// A service manager that only notes readiness.
struct Ready(Arc<AtomicBool>);

impl webjobs::daemon::Notifier for Ready {
    fn ready(&self) {
        self.0.store(true, Ordering::Release);
    }
}

fn config_for(root: &Root) -> Config {
    let sources = Sources { file: Some(root.config_path()), root: Some(root.path().to_path_buf()), listen: None };
    let mut config = Config::load(&sources).unwrap();
    config.api.listen = None; // the Unix socket only: tests run side by side
    config.instance_id = root.instance.clone(); // as the helper's CLI calls expect
    config
}

#[test]
fn the_daemon_runs_in_process_and_stops_when_told() {
    let root = Root::new();
    root.continuous("ticker", "while true; do echo tick; sleep 0.05; done\n");
    root.job("triggered", "once", &[("run.sh", "echo once\n")]);
    let config = config_for(&root);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    let notifier = Ready(ready.clone());
    let daemon = runtime.spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        webjobs::daemon::run(config, shutdown, std::future::pending(), reloads, notifier).await
    });
    wait_for("ready", Duration::from_secs(10), || ready.load(Ordering::Acquire));
    wait_for("the job's output", Duration::from_secs(10), || root.log("ticker").contains("] tick"));
    // The CLI talks to it like to any daemon.
    let out = root.cli(&["run", "once", "--wait"]);
    assert!(out.status.success(), "{:?}: {}{}", out.status, stdout(&out), stderr(&out));
    assert!(root.status_is("ticker", "Running"), "{}", root.status("ticker"));
    stop.send(()).unwrap();
    let result = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), daemon).await });
    assert!(matches!(result, Ok(Ok(Ok(())))), "the daemon returned {result:?}");
    assert!(root.log("ticker").contains("stopping (daemon stopping)"));
    assert!(root.status_is("ticker", "Stopped"), "{}", root.status("ticker"));
}

/// Hour-long limits, played out in paused time: the daemon runs on a runtime
/// whose clock jumps to the next timer whenever it waits (tokio's paused
/// clock), so a run's one-hour timeout and a ten-minute grace before SIGKILL
/// pass in well under a second while the job's processes are real. (The run
/// comes from the schedule, on the wall clock: a request over the API would
/// meet the server's own timeouts, which paused time ends at once.)
#[test]
fn an_hour_long_timeout_and_a_ten_minute_grace_pass_in_paused_time() {
    let root = Root::new();
    root.job(
        "triggered",
        "deaf",
        &[
            ("run.sh", "trap '' TERM\necho begun\nwhile true; do sleep 0.2; done\n"),
            (
                "settings.job",
                r#"{"schedule": "* * * * * *", "timeout": 3600, "idle_timeout": 86400, "stopping_wait_time": 600}"#,
            ),
        ],
    );
    let config = config_for(&root);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    let notifier = Ready(ready.clone());
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            webjobs::daemon::run(config, shutdown, std::future::pending(), reloads, notifier).await
        })
    });
    wait_for("ready", Duration::from_secs(10), || ready.load(Ordering::Acquire));
    wait_for("a run", Duration::from_secs(10), || !root.runs("deaf").is_empty());
    let id = root.runs("deaf")[0].clone();
    let started = std::time::Instant::now();
    wait_for("the run's end", Duration::from_secs(30), || root.run_status("deaf", &id)["Status"] == "Failed");
    let wall = started.elapsed();
    let status = root.run_status("deaf", &id);
    assert!(status["Error"].as_str().unwrap().contains("took longer than 60m"), "{status}");
    let log = root.run_log("deaf", &id);
    assert!(log.contains("still running after 10m; sending SIGKILL"), "{log}");
    assert!(wall < Duration::from_secs(20), "an hour and ten minutes took {wall:?} of real time");
    stop.send(()).unwrap();
    assert!(thread.join().unwrap().is_ok());
}
