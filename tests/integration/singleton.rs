//! is_singleton across daemons sharing a data folder, and failover.

use std::time::Duration;

use crate::helper::*;

#[test]
fn a_singleton_never_runs_twice_through_a_sigkill_of_its_holder() {
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
    // SIGKILL of the holder: its job runs on as an orphan and keeps the lock
    // (the run holds it), so the other daemon must not start a second copy.
    let holder_instance = holder.marker_prefix.trim_end_matches('.').to_string();
    let orphan = holder.job_pids("only");
    let leftovers = holder.kill9();
    let copies = || marked_pids(&leftovers.prefix, "only").len() + other.job_pids("only").len();
    let sample_until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < sample_until {
        assert!(copies() <= 1, "two copies of a singleton at once");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(orphan.iter().all(|p| alive(*p)), "the orphan runs on");
    assert!(other.job_pids("only").is_empty(), "no takeover while the old run lives");
    // The killed daemon comes back: it ends its leftovers, which frees the lock;
    // exactly one copy runs again (sampled all along).
    let back = Daemon::start_as(&root, &holder_instance, &[]);
    let running = || {
        let mut pids = back.job_pids("only");
        pids.extend(other.job_pids("only"));
        pids.sort();
        pids.dedup();
        pids
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pids = running();
        assert!(pids.len() <= 1, "two copies at once: {pids:?}");
        if pids.len() == 1 && !orphan.contains(&pids[0]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no copy runs after the holder came back: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = root.log("only");
    assert!(log.contains("singleton lock acquired"), "{log}");
    other.stop();
    back.stop();
}
