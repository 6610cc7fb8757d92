//! Notifications: `notify` rules, the outbox, delivery to a real receiver on loopback.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helper::*;

/// The Python receiver of `receiver.py`: its port, and the requests it got.
struct Receiver {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    status: std::path::PathBuf,
}

impl Receiver {
    fn start(root: &Root, secret: &str) -> Receiver {
        let log = root.path().join("received.jsonl");
        let status = root.path().join("receiver-status");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/receiver.py");
        let mut child = Command::new("python3")
            .args([script, log.to_str().unwrap(), status.to_str().unwrap(), secret])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Receiver { child, port: line.trim().parse().unwrap(), log, status }
    }

    fn answer(&self, status: u16) {
        std::fs::write(&self.status, status.to_string()).unwrap();
    }

    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn delivered(&self) -> Vec<serde_json::Value> {
        self.received().into_iter().filter(|r| r["status"] == 200).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn notifications_are_signed_retried_while_the_receiver_fails_and_survive_a_sigkill_in_order() {
    let root = Root::with_config(serde_json::json!({"notify_secret": "s3cret"}));
    let receiver = Receiver::start(&root, "s3cret");
    receiver.answer(503);
    let url = format!("http://127.0.0.1:{}/hook", receiver.port);
    let settings = serde_json::json!({"notify": [{"on": ["failed", "succeeded"], "url": url}]});
    root.job("triggered", "exits", &[("run.sh", "exit \"$1\"\n"), ("settings.job", &settings.to_string())]);
    let daemon = root.start();
    for code in ["1", "0", "2"] {
        let out = root.cli(&["run", "exits", "--wait", "--", code]);
        assert!(out.status.code().is_some(), "{}", stderr(&out));
    }
    // The receiver fails: they wait, tried again, with the reason shown.
    wait_for("a failed try", Duration::from_secs(10), || !receiver.received().is_empty());
    let out = root.cli(&["notifications", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["pending"].as_array().unwrap().len(), 3, "{listed}");
    wait_for("the reason", Duration::from_secs(10), || {
        let out = root.cli(&["notifications"]);
        stdout(&out).contains("the receiver answered 503")
    });
    // A SIGKILL loses none of them.
    let leftovers = daemon.kill9();
    drop(leftovers);
    receiver.answer(200);
    let daemon = root.start();
    wait_for("every notification", Duration::from_secs(20), || receiver.delivered().len() == 3);
    let delivered = receiver.delivered();
    let codes: Vec<&str> = delivered.iter().map(|r| r["body"]["detail"]["Arguments"][0].as_str().unwrap()).collect();
    assert_eq!(codes, ["1", "0", "2"], "in the order of the runs");
    let events: Vec<&str> = delivered.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["failed", "succeeded", "failed"]);
    for r in &delivered {
        assert!(r["signed"].as_bool().unwrap(), "HMAC-SHA256 of the body with notify_secret: {r}");
        assert_eq!(r["path"], "/hook");
        assert_eq!(r["body"]["id"], r["delivery"], "the id is the delivery's, kept across tries");
        assert_eq!(r["body"]["job"], "exits");
        assert!(r["body"]["time"].as_str().unwrap().ends_with('Z'));
    }
    // Each was tried while the receiver failed, and delivered once.
    let ids: std::collections::BTreeSet<&str> = delivered.iter().map(|r| r["delivery"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    wait_for("an empty outbox", Duration::from_secs(10), || {
        stdout(&root.cli(&["notifications"])).contains("no notification pending")
    });
    let metrics = root.http().get("/metrics").text();
    assert!(metrics.contains("webjobs_notifications_total{result=\"delivered\"} 3"), "{metrics}");
    daemon.stop();
}

#[test]
fn a_receiver_answering_gone_is_given_up_and_a_bad_rule_is_refused() {
    let root = Root::new();
    let receiver = Receiver::start(&root, "");
    receiver.answer(410);
    let url = format!("http://127.0.0.1:{}/gone", receiver.port);
    let config = serde_json::json!({"notify": [{"on": ["*"], "url": url}]});
    std::fs::write(root.config_path(), config.to_string()).unwrap();
    root.job("triggered", "ok", &[("run.sh", "true\n")]);
    root.job(
        "triggered",
        "bad",
        &[("run.sh", "true\n"), ("settings.job", r#"{"notify": [{"on": ["boom"], "url": "x"}]}"#)],
    );
    let daemon = root.start();
    assert!(root.cli(&["run", "ok", "--wait"]).status.success());
    // The daemon-wide rule: started and succeeded, each given up at its 410.
    wait_for("two given up", Duration::from_secs(10), || {
        let out = root.cli(&["notifications", "--json"]);
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        listed["failed"].as_array().unwrap().len() == 2
    });
    assert_eq!(receiver.received().len(), 2, "no second try after 410");
    let text = stdout(&root.cli(&["notifications"]));
    assert!(text.contains("answered 410; not tried again"), "{text}");
    let status = root.status("bad");
    let error = status["error"].as_str().or(status["Error"].as_str()).unwrap_or_default().to_string();
    let validate = root.cli(&["validate"]);
    assert!(stdout(&validate).contains("unknown event \"boom\""), "{}{error}", stdout(&validate));
    daemon.stop();
}
