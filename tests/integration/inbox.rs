//! File-arrival triggers: one run per file that lands in a job's inbox, only
//! complete files, each once across daemons, moved by the outcome.

use std::time::Duration;

use crate::helper::*;

fn inbox_job(root: &Root, name: &str, script: &str) -> std::path::PathBuf {
    let settings = r#"{"trigger": {"inbox": "inbox", "pattern": "*.csv", "scan_interval": 0.5}, "max_parallel": 2}"#;
    root.job("triggered", name, &[("run.sh", script), ("settings.job", settings)]);
    root.path().join("data/inbox")
}

#[test]
fn a_thousand_files_dropped_at_once_run_once_each_and_are_moved() {
    let root = Root::new();
    let done = root.path().join("done");
    let script = format!("echo \"$(basename \"$WEBJOBS_TRIGGER_FILE\") $1\" >> {}\n", done.display());
    let inbox = inbox_job(&root, "csv", &script);
    // Present before the daemon starts (and settled): taken at start.
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("early.csv"), "0").unwrap();
    let staging = root.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for i in 0..1000 {
        std::fs::write(staging.join(format!("f{i:04}.csv")), i.to_string()).unwrap();
    }
    std::fs::write(staging.join("ignored.txt"), "x").unwrap();
    std::fs::write(staging.join(".hidden.csv"), "x").unwrap();
    let settled = std::time::Instant::now() + Duration::from_millis(2100);
    wait_for("the early file settled", Duration::from_secs(5), || std::time::Instant::now() > settled);
    let daemon = root.start();
    for entry in std::fs::read_dir(&staging).unwrap().flatten() {
        std::fs::rename(entry.path(), inbox.join(entry.file_name())).unwrap();
    }
    wait_for("1,001 runs", Duration::from_secs(60), || read(&done).lines().count() >= 1001);
    let text = read(&done);
    let mut names: Vec<&str> = text.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    names.sort();
    let total = names.len();
    names.dedup();
    assert_eq!((names.len(), total), (1001, 1001), "each file once");
    assert!(text.lines().all(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains("/inbox/.processing/"))));
    wait_for("all moved to processed/", Duration::from_secs(10), || {
        std::fs::read_dir(inbox.join("processed")).map(|d| d.count()).unwrap_or(0) == 1001
    });
    assert!(inbox.join("ignored.txt").exists() && inbox.join(".hidden.csv").exists(), "not matching: left alone");
    daemon.stop();
}

#[test]
fn a_file_copied_slowly_is_never_picked_up_half_written_and_a_failing_one_goes_to_failed() {
    let root = Root::new();
    let sizes = root.path().join("sizes");
    let script =
        format!("wc -c < \"$WEBJOBS_TRIGGER_FILE\" >> {}\ncase \"$1\" in *bad*) exit 1;; esac\n", sizes.display());
    let inbox = inbox_job(&root, "slow", &script);
    let daemon = root.start();
    // Written in ten pieces, 0.3 s apart: longer than a scan interval, shorter than the settle time.
    let mut file = std::fs::File::create(inbox.join("big.csv")).unwrap();
    for _ in 0..10 {
        use std::io::Write;
        file.write_all(&[b'x'; 1000]).unwrap();
        file.flush().unwrap();
        let next = std::time::Instant::now() + Duration::from_millis(300);
        wait_for("a pause in the copy", Duration::from_secs(2), || std::time::Instant::now() > next);
        assert!(read(&sizes).is_empty(), "not taken while it is being written");
    }
    drop(file);
    wait_for("the run", Duration::from_secs(10), || !read(&sizes).is_empty());
    assert_eq!(read(&sizes).trim(), "10000", "the whole file");
    std::fs::write(inbox.join("bad.csv"), "1").unwrap();
    wait_for("moved to failed/", Duration::from_secs(10), || inbox.join("failed/bad.csv").exists());
    assert!(inbox.join("processed/big.csv").exists());
    let dead: serde_json::Value = serde_json::from_str(&stdout(&root.cli(&["dead", "slow", "--json"]))).unwrap();
    assert_eq!(dead["count"], 1, "{dead}");
    daemon.stop();
}

#[test]
fn two_daemons_sharing_one_inbox_run_each_file_once() {
    let root = Root::new();
    let done = root.path().join("done");
    let script = format!("echo \"$(basename \"$1\") $WEBJOBS_NAME\" >> {}\n", done.display());
    let inbox = inbox_job(&root, "shared", &script);
    let a = Daemon::start_as(&root, "a", &[]);
    let b = Daemon::start_as(&root, "b", &[]);
    let staging = root.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for i in 0..300 {
        std::fs::write(staging.join(format!("f{i:03}.csv")), "x").unwrap();
        std::fs::rename(staging.join(format!("f{i:03}.csv")), inbox.join(format!("f{i:03}.csv"))).unwrap();
    }
    wait_for("300 runs", Duration::from_secs(60), || read(&done).lines().count() >= 300);
    let processed = || std::fs::read_dir(inbox.join("processed")).map(|d| d.count()).unwrap_or(0);
    wait_for("all processed", Duration::from_secs(10), || processed() == 300);
    let text = read(&done);
    let mut names: Vec<&str> = text.lines().collect();
    names.sort();
    names.dedup();
    assert_eq!((names.len(), text.lines().count()), (300, 300), "each file once across both daemons");
    let runs_on = |instance: &str| {
        root.runs("shared").iter().filter(|id| root.run_status("shared", id)["Instance"] == instance).count()
    };
    assert!(runs_on("a") + runs_on("b") > 0);
    a.stop();
    b.stop();
}

#[test]
fn an_unusable_inbox_or_queue_is_a_clear_error_and_other_jobs_keep_running() {
    let root = Root::new();
    // The inbox is a file, not a folder.
    std::fs::create_dir_all(root.path().join("data")).unwrap();
    std::fs::write(root.path().join("data/inbox"), "not a folder").unwrap();
    inbox_job(&root, "blocked", "echo never\n");
    // The queue folder is a file: no request can be stored.
    root.job("triggered", "unstorable", &[("run.sh", "echo never\n")]);
    std::fs::create_dir_all(root.data_dir("triggered", "unstorable")).unwrap();
    std::fs::write(root.data_dir("triggered", "unstorable").join("queue"), "x").unwrap();
    root.job("triggered", "fine", &[("run.sh", "echo fine\n")]);
    let daemon = root.start();
    let log = root.data_dir("triggered", "blocked").join("job_scheduler.log");
    wait_for("the inbox error", Duration::from_secs(10), || read(&log).contains("SYS ERROR] cannot watch the inbox"));
    let reply = root.http().post("/api/triggeredwebjobs/unstorable/run");
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(reply.text().contains("cannot queue the request"), "{}", reply.text());
    let out = root.cli(&["run", "unstorable"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("cannot queue the request"), "{}", stderr(&out));
    assert!(root.cli(&["run", "fine", "--wait"]).status.success(), "other jobs keep running");
    daemon.stop();
}
