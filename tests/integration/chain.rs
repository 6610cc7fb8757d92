//! Chaining: `then` starts triggered jobs when a request ends.

use std::time::Duration;

use crate::helper::*;

/// A job that records what it was given: its parent, run and correlation
/// from the environment, its payload from stdin.
fn recorder(root: &Root, name: &str) {
    let out = root.path().join("heard");
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        "{{ echo \"$WEBJOBS_PARENT_JOB $WEBJOBS_PARENT_RUN $WEBJOBS_CORRELATION_ID\"; cat; echo; cat \"$WEBJOBS_PARENT_RESULT_FILE\"; }} > {}/{name}.$WEBJOBS_RUN_ID\n",
        out.display()
    );
    root.job("triggered", name, &[("run.sh", &script)]);
}

fn heard(root: &Root, name: &str) -> Vec<String> {
    let mut all: Vec<(String, String)> = std::fs::read_dir(root.path().join("heard"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            file.starts_with(&format!("{name}.")).then(|| (file, read(&e.path())))
        })
        .collect();
    all.sort();
    all.into_iter().map(|(_, text)| text).collect()
}

#[test]
fn then_starts_jobs_on_success_on_failure_after_retries_and_always_passing_the_parent_on() {
    let root = Root::new();
    let settings = serde_json::json!({
        "retries": 1, "retry_delay": 0,
        "then": {"success": ["on-ok"], "failure": ["on-fail"], "always": ["audit"]},
    });
    root.job(
        "triggered",
        "parent",
        &[
            ("run.sh", "echo '{\"rows\": 42}' > \"$WEBJOBS_RESULT_FILE\"\nexit \"$1\"\n"),
            ("settings.job", &settings.to_string()),
        ],
    );
    for child in ["on-ok", "on-fail", "audit"] {
        recorder(&root, child);
    }
    let daemon = root.start();
    let out = root.cli(&["run", "parent", "--wait", "--correlation-id", "c-1", "--", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let parent_run = root.runs("parent").pop().unwrap();
    wait_for("on-ok and audit", Duration::from_secs(15), || {
        root.finished_runs("on-ok").len() == 1 && root.finished_runs("audit").len() == 1
    });
    let got = heard(&root, "on-ok");
    assert_eq!(got.len(), 1);
    let lines: Vec<&str> = got[0].lines().collect();
    assert_eq!(lines[0], format!("parent {parent_run} c-1"), "{got:?}");
    assert!(lines[1].contains("\"rows\": 42"), "the parent's result is the payload: {got:?}");
    assert!(got[0].matches("\"rows\": 42").count() == 2, "and WEBJOBS_PARENT_RESULT_FILE: {got:?}");
    // The links: the parent lists its children, each child names its parent.
    let status = root.run_status("parent", &parent_run);
    let children: Vec<&str> =
        status["Children"].as_array().unwrap().iter().map(|c| c["job"].as_str().unwrap()).collect();
    assert_eq!(children, ["on-ok", "audit"], "{status}");
    let child_run = root.runs("on-ok").pop().unwrap();
    let child = root.run_status("on-ok", &child_run);
    assert_eq!(child["Parent"]["job"], "parent");
    assert_eq!(child["Parent"]["run"], parent_run.as_str());
    assert!(child["Trigger"].as_str().unwrap().starts_with(&format!("Chain - parent/{parent_run} (success)")));
    // The same links in the API's run JSON.
    let http = root.http();
    let api = http.get(&format!("/api/triggeredwebjobs/parent/history/{parent_run}")).json();
    assert_eq!(api["children"].as_array().unwrap().len(), 2, "{api}");
    let api = http.get(&format!("/api/triggeredwebjobs/on-ok/history/{child_run}")).json();
    assert_eq!(api["parent"]["run"], parent_run.as_str(), "{api}");
    assert!(root.finished_runs("on-fail").is_empty());
    // A failure: on-fail only after the last attempt (one retry), and audit again.
    assert_eq!(root.cli(&["run", "parent", "--", "5"]).status.code(), Some(0));
    wait_for("on-fail", Duration::from_secs(15), || root.finished_runs("on-fail").len() == 1);
    wait_for("audit twice", Duration::from_secs(15), || root.finished_runs("audit").len() == 2);
    assert_eq!(root.finished_runs("parent").len(), 3, "the first run, and the failed one with its retry");
    assert_eq!(root.finished_runs("on-fail").len(), 1, "once, after the retry");
    assert_eq!(root.finished_runs("on-ok").len(), 1);
    daemon.stop();
}

#[test]
fn a_loop_is_refused_by_validate_with_its_path_and_never_runs_round() {
    let root = Root::new();
    root.job("triggered", "a", &[("run.sh", "true\n"), ("settings.job", r#"{"then": {"success": ["b"]}}"#)]);
    root.job("triggered", "b", &[("run.sh", "true\n"), ("settings.job", r#"{"then": {"always": ["a", "ghost"]}}"#)]);
    let out = root.cli(&["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("then: a loop: a → b → a"), "{text}");
    assert!(text.contains("then: there is no triggered job ghost"), "{text}");
    // The daemon starts b after a, and not a again.
    let daemon = root.start();
    assert!(root.cli(&["run", "a", "--wait"]).status.success());
    wait_for("b", Duration::from_secs(10), || root.finished_runs("b").len() == 1);
    wait_for("the loop said", Duration::from_secs(10), || {
        read(&root.data_dir("triggered", "b").join("job_scheduler.log"))
            .contains("a is not started again: a loop (a → b → a)")
    });
    assert_eq!(root.finished_runs("a").len(), 1);
    daemon.stop();
}
