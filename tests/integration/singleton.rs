//! is_singleton across daemons sharing a data folder, and failover.

use std::time::Duration;

use crate::helper::*;

#[test]
fn one_instance_runs_a_singleton_and_another_takes_over_after_a_sigkill() {
    let root = Root::with_config(serde_json::json!({"singleton_retry_ms": 500}));
    root.job("continuous", "only", &[("run.sh", "exec sleep 300\n"), ("settings.job", r#"{"is_singleton": true}"#)]);
    root.continuous("everywhere", "exec sleep 300\n");
    let a = Daemon::start_as(&root, "insta", &[]);
    let b = Daemon::start_as(&root, "instb", &[]);
    wait_for("one runs it", Duration::from_secs(10), || a.job_pids("only").len() + b.job_pids("only").len() == 1);
    wait_for("non-singletons run everywhere", Duration::from_secs(10), || {
        a.job_pids("everywhere").len() == 1 && b.job_pids("everywhere").len() == 1
    });
    let (holder, other) = if a.job_pids("only").len() == 1 { (a, b) } else { (b, a) };
    let inactive = std::fs::read_to_string(
        root.data_dir("continuous", "only").join(format!("status_{}", other.marker_prefix.trim_end_matches('.'))),
    )
    .unwrap();
    assert!(inactive.contains("InactiveInstance"), "{inactive}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(other.job_pids("only").is_empty(), "never two at once");
    let list = stdout(&root.cli(&["status", "only"]));
    assert!(list.contains("InactiveInstance") && list.contains("Running"), "{list}");
    let _leftovers = holder.kill9();
    let took = time_until("takeover", Duration::from_secs(5), || other.job_pids("only").len() == 1);
    eprintln!("takeover after {took:?}");
    let log = root.log("only");
    assert!(log.contains("singleton lock acquired"), "{log}");
    other.stop();
}
