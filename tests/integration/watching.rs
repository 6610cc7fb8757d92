//! Files changed under the daemon: new jobs start, removed jobs stop, a mass
//! copy settles into one reload with no half-copied job started.

use std::time::Duration;

use crate::helper::*;

#[test]
fn a_new_job_starts_and_a_removed_job_stops() {
    let root = Root::new();
    let daemon = root.start();
    let staging = root.path().join("staging/newjob");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("run.sh"), "exec sleep 300\n").unwrap();
    let took = {
        std::fs::rename(&staging, root.job_dir("continuous", "newjob")).unwrap();
        time_until("new job running", Duration::from_secs(10), || daemon.job_pids("newjob").len() == 1)
    };
    assert!(took < Duration::from_secs(3), "took {took:?}");
    std::fs::remove_dir_all(root.job_dir("continuous", "newjob")).unwrap();
    wait_for("removed job stopped", Duration::from_secs(10), || daemon.job_pids("newjob").is_empty());
    assert!(root.log("newjob").contains("stopping (the job folder was removed)"));
    daemon.stop();
}

#[test]
fn five_hundred_jobs_copied_in_settle_into_one_reload() {
    // A quiet period longer than any pause of this copy loop on a busy machine.
    let root = Root::with_config(serde_json::json!({"debounce_ms": 2500}));
    let daemon = root.start();
    // Each job's script refuses to run unless the file copied last is there.
    let check = "if [ ! -f complete.txt ]; then echo HALF-COPIED >&2; fi\nexec sleep 300\n";
    for i in 0..500 {
        let dir = root.job_dir("continuous", &format!("j{i:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("run.sh"), check).unwrap();
        std::fs::write(dir.join("data.txt"), "x".repeat(1000)).unwrap();
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(40));
        }
        std::fs::write(dir.join("complete.txt"), "ok").unwrap();
    }
    wait_for("500 jobs running", Duration::from_secs(60), || marked_pids(&daemon.marker_prefix, "").len() == 500);
    let reloads = daemon.stderr().matches(" reload ").count();
    assert_eq!(reloads, 1, "{}", daemon.stderr());
    for i in [0, 250, 499] {
        assert!(!root.log(&format!("j{i:03}")).contains("HALF-COPIED"));
    }
    daemon.stop();
}

#[test]
fn a_jobs_folder_replaced_by_rename_or_link_flip_is_reloaded_and_watched() {
    let root = Root::new();
    root.continuous("one", "exec sleep 300\n");
    // Deploys by link flip: jobs -> releases/1/jobs.
    let releases = root.path().join("releases");
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(releases.join("1")).unwrap();
    std::fs::rename(&jobs, releases.join("1/jobs")).unwrap();
    std::os::unix::fs::symlink(releases.join("1/jobs"), &jobs).unwrap();
    let daemon = root.start();
    wait_for("one running", Duration::from_secs(10), || root.status_is("one", "Running"));
    // Release 2: `one` gone, `two` new; flipped in as `ln -sfn` does (a new link renamed over).
    let two = releases.join("2/jobs/continuous/two");
    std::fs::create_dir_all(&two).unwrap();
    std::fs::write(two.join("run.sh"), "exec sleep 300\n").unwrap();
    std::fs::create_dir_all(releases.join("2/jobs/triggered")).unwrap();
    std::os::unix::fs::symlink(releases.join("2/jobs"), root.path().join("jobs.tmp")).unwrap();
    std::fs::rename(root.path().join("jobs.tmp"), &jobs).unwrap();
    wait_for("the flip reloaded", Duration::from_secs(10), || {
        root.status_is("two", "Running") && root.status_is("one", "Stopped")
    });
    // Later edits inside the new target are noticed.
    root.continuous("three", "exec sleep 300\n");
    wait_for("a job added to the new folder", Duration::from_secs(10), || root.status_is("three", "Running"));
    // Replaced by a rename of a plain folder (`mv jobs.new jobs`).
    let fresh = root.path().join("jobs.new/continuous/four");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("run.sh"), "exec sleep 300\n").unwrap();
    std::fs::remove_file(&jobs).unwrap();
    std::fs::rename(root.path().join("jobs.new"), &jobs).unwrap();
    wait_for("the rename reloaded", Duration::from_secs(10), || {
        root.status_is("four", "Running") && root.status_is("two", "Stopped")
    });
    root.continuous("five", "exec sleep 300\n");
    wait_for("a job added after the rename", Duration::from_secs(10), || root.status_is("five", "Running"));
    daemon.stop();
}

#[test]
fn a_slow_copy_never_starts_a_half_copied_job() {
    // Debounce 150 ms: a stream of events forces a reload after 1.5 s; this copy takes 3 s.
    let root = Root::new();
    let daemon = root.start();
    let dir = root.job_dir("continuous", "slowcopy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("run.sh"), "if [ -e last ]; then echo complete; else echo HALF; fi\nexec sleep 300\n")
        .unwrap();
    // A file every 50 ms (faster than the quiet period) for 3 s.
    for i in 0..60 {
        std::fs::write(dir.join(format!("part{i}.dat")), "x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("last"), "").unwrap();
    wait_for("the job started once complete", Duration::from_secs(15), || root.log("slowcopy").contains("] complete"));
    assert!(!root.log("slowcopy").contains("HALF"), "{}", root.log("slowcopy"));
    daemon.stop();
}
