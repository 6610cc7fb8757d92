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
        Self::start_with(root, secret, &[])
    }

    /// With `tls` (a certificate and its key, PEM), an https receiver.
    fn start_with(root: &Root, secret: &str, tls: &[&std::path::Path]) -> Receiver {
        let log = root.path().join("received.jsonl");
        let status = root.path().join("receiver-status");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/receiver.py");
        let mut child = Command::new("python3")
            .args([script, log.to_str().unwrap(), status.to_str().unwrap(), secret])
            .args(tls)
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
    let api = root.http().get("/api/notifications").json();
    assert_eq!(api["pending"].as_array().unwrap().len(), 3, "the API lists them too: {api}");
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
    // The receiver's port is known once it runs: the config is written after.
    let root = Root::new();
    let receiver = Receiver::start(&root, "");
    receiver.answer(410);
    let url = format!("http://127.0.0.1:{}/gone", receiver.port);
    root.add_config(serde_json::json!({"notify": [{"on": ["*"], "url": url}]}));
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

#[test]
fn kudus_web_hooks_subscribe_get_the_finished_run_and_deploys_and_a_410_unsubscribes() {
    let root = Root::new();
    let receiver = Receiver::start(&root, "");
    root.job("triggered", "report", &[("run.sh", "echo done\n")]);
    let daemon = root.start();
    let http = root.http();
    let url = format!("http://127.0.0.1:{}/finished", receiver.port);
    let subscribe = |body: serde_json::Value| {
        http.send("POST", "/api/hooks", &[("Content-Type", "application/json")], body.to_string().as_bytes())
    };
    let created = subscribe(serde_json::json!({"url": url, "event": "TriggeredJobFinished"}));
    assert_eq!(created.status, 201, "{}", created.text());
    let hook = created.json();
    assert_eq!(hook["url"], url.as_str());
    assert_eq!(hook["event"], "TriggeredJobFinished");
    assert_eq!(hook["insecure_ssl"], false);
    // The same URL and event: the same hook; another event for it: 409, as in Kudu.
    assert_eq!(subscribe(serde_json::json!({"url": url, "event": "TriggeredJobFinished"})).json()["id"], hook["id"]);
    assert_eq!(subscribe(serde_json::json!({"url": url, "event": "PostDeployment"})).status, 409);
    assert_eq!(subscribe(serde_json::json!({"url": "ftp://x", "event": "PostDeployment"})).status, 400);
    assert_eq!(subscribe(serde_json::json!({"url": "http://x/", "event": "Nope"})).status, 400);
    let deploys = format!("http://127.0.0.1:{}/deploys", receiver.port);
    let deploy_hook = subscribe(serde_json::json!({"url": deploys, "event": "PostDeployment"})).json();
    assert_eq!(http.get("/api/hooks").json().as_array().unwrap().len(), 2);
    let id = hook["id"].as_str().unwrap();
    assert_eq!(http.get(&format!("/api/hooks/{id}")).json(), hook);
    assert_eq!(http.get("/api/hooks/nope").status, 404);

    // A run's end: its JSON as the history API shows it.
    let out = root.cli(&["run", "report", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("TriggeredJobFinished", Duration::from_secs(10), || !receiver.delivered().is_empty());
    let got = receiver.delivered()[0].clone();
    assert_eq!(got["path"], "/finished");
    assert_eq!(got["event"], "TriggeredJobFinished");
    let run = &got["body"];
    let id_of_run = root.runs("report").pop().unwrap();
    assert_eq!(run["id"], id_of_run.as_str());
    assert_eq!(run["status"], "Success");
    assert_eq!(run["job_name"], "report");
    for field in ["name", "start_time", "end_time", "duration", "output_url", "url", "trigger"] {
        assert!(!run[field].is_null(), "{field} missing: {run}");
    }
    let history = http.get(&format!("/api/triggeredwebjobs/report/history/{id_of_run}")).json();
    assert_eq!(run["output_url"], history["output_url"], "the same URLs as the API's");

    // A deploy through the API: PostDeployment.
    let put = http.send(
        "PUT",
        "/api/triggeredwebjobs/fresh",
        &[("Content-Disposition", "attachment; filename=run.sh")],
        b"echo fresh\n",
    );
    assert_eq!(put.status, 200, "{}", put.text());
    wait_for("PostDeployment", Duration::from_secs(10), || {
        receiver.delivered().iter().any(|r| r["path"] == "/deploys")
    });
    let deployed = receiver.delivered().into_iter().find(|r| r["path"] == "/deploys").unwrap();
    assert_eq!(deployed["body"]["status"], 4);
    assert_eq!(deployed["body"]["complete"], true);

    // A receiver that answers 410 Gone unsubscribes its hook.
    receiver.answer(410);
    let out = root.cli(&["run", "report", "--wait"]);
    assert!(out.status.success());
    wait_for("the hook removed", Duration::from_secs(10), || {
        http.get("/api/hooks").json().as_array().unwrap().len() == 1
    });
    assert_eq!(http.get("/api/hooks").json()[0]["id"], deploy_hook["id"]);
    let deploy_id = deploy_hook["id"].as_str().unwrap();
    assert_eq!(http.send("DELETE", &format!("/api/hooks/{deploy_id}"), &[], b"").status, 200);
    assert!(http.get("/api/hooks").json().as_array().unwrap().is_empty());
    assert_eq!(http.send("DELETE", "/api/hooks/gone", &[], b"").status, 200, "200 also when absent, as in Kudu");
    daemon.stop();
}

#[test]
fn a_command_hears_a_failure_and_the_recovery_with_the_runs_facts_and_a_hanging_one_delays_nothing() {
    let root = Root::new();
    let out = root.path().join("heard");
    std::fs::create_dir_all(&out).unwrap();
    let record = format!(
        "cat > {0}/$WEBJOBS_EVENT-$WEBJOBS_RUN_ID.json; env | grep ^WEBJOBS_ > {0}/$WEBJOBS_EVENT-$WEBJOBS_RUN_ID.env",
        out.display()
    );
    let settings = serde_json::json!({"notify": [
        {"on": ["failed", "recovered"], "command": record},
        {"on": ["succeeded"], "command": "exec sleep 1000"},
    ]});
    root.job(
        "triggered",
        "flip",
        &[("run.sh", "echo \"line of $1\"; exit \"$1\"\n"), ("settings.job", &settings.to_string())],
    );
    let daemon = root.start();
    assert_eq!(root.cli(&["run", "flip", "--wait", "--", "3"]).status.code(), Some(6));
    let failed_run = root.runs("flip").pop().unwrap();
    let env_file = out.join(format!("failed-{failed_run}.env"));
    wait_for("the failed notification", Duration::from_secs(10), || {
        env_file.exists() && read(&env_file).contains("WEBJOBS_OUTPUT_TAIL")
    });
    let env = read(&env_file);
    assert!(env.contains("WEBJOBS_RUN_STATUS=Failed"), "{env}");
    assert!(env.contains("WEBJOBS_EXIT_CODE=3"), "{env}");
    assert!(env.contains("WEBJOBS_JOB_NAME=flip"), "{env}");
    let output_path = env.lines().find_map(|l| l.strip_prefix("WEBJOBS_OUTPUT_PATH=")).unwrap().to_string();
    assert!(read(std::path::Path::new(&output_path)).contains("line of 3"));
    assert!(env.contains("WEBJOBS_OUTPUT_TAIL="), "{env}");
    let body: serde_json::Value = serde_json::from_str(&read(&out.join(format!("failed-{failed_run}.json")))).unwrap();
    assert_eq!(body["event"], "failed");
    let tail = body["output_tail"].as_str().unwrap();
    assert!(tail.ends_with("exit code 3") || tail.contains("] line of 3"), "{tail}");
    assert_eq!(body["detail"]["ExitCode"], 3);
    // The next success is a recovery; its "succeeded" command hangs, and
    // delays neither this run's end nor the next run.
    let started = std::time::Instant::now();
    assert!(root.cli(&["run", "flip", "--wait", "--", "0"]).status.success());
    let recovered_run = root.runs("flip").pop().unwrap();
    let recovered = out.join(format!("recovered-{recovered_run}.json"));
    wait_for("the recovered notification", Duration::from_secs(10), || recovered.exists());
    assert!(root.cli(&["run", "flip", "--wait", "--", "0"]).status.success());
    assert!(started.elapsed() < Duration::from_secs(10), "a hanging notification command held up runs");
    let listed = stdout(&root.cli(&["notifications", "--json"]));
    assert!(listed.contains("exec sleep 1000"), "the hanging one waits, visible: {listed}");
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn a_crash_loop_its_recovery_invalid_files_and_skipped_ticks_are_told() {
    let root = Root::new();
    let out = root.path().join("heard");
    std::fs::create_dir_all(&out).unwrap();
    // Written whole, then renamed: a reader never sees half of one.
    let record = format!("cat > {0}/.t-$$ && mv {0}/.t-$$ {0}/$WEBJOBS_EVENT-$WEBJOBS_JOB_NAME.json", out.display());
    root.add_config(serde_json::json!({"notify": [{"on": ["invalid", "skipped"], "command": record}]}));
    // Crashes three times, then runs.
    let counter = root.path().join("starts");
    let script = format!(
        "n=$(cat {0} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {0}; [ $n -le 3 ] && exit 1; exec sleep 300\n",
        counter.display()
    );
    let settings = serde_json::json!({
        "restart_delay": 0.05, "max_restart_delay": 0.05,
        "crash_loop": {"restarts": 3, "within": 60, "recovered_after": 1},
        "notify": [{"on": ["crash_loop", "recovered"], "command": record}],
    });
    root.job("continuous", "shaky", &[("run.sh", &script), ("settings.job", &settings.to_string())]);
    root.job(
        "triggered",
        "slow",
        &[("run.sh", "sleep 3\n"), ("settings.job", r#"{"schedule": "* * * * * *", "overlap": "skip"}"#)],
    );
    let daemon = root.start();
    let looped = out.join("crash_loop-shaky.json");
    wait_for("the crash loop told", Duration::from_secs(20), || looped.exists());
    let body: serde_json::Value = serde_json::from_str(&read(&looped)).unwrap();
    assert_eq!(body["detail"]["restarts"], 3, "{body}");
    assert!(root.log("shaky").contains("crash loop: 3 restarts within 1m"), "{}", root.log("shaky"));
    let recovered = out.join("recovered-shaky.json");
    wait_for("the recovery told", Duration::from_secs(20), || recovered.exists());
    assert!(root.status_is("shaky", "Running"));
    // A tick while the last run goes on, with overlap: skip.
    let skipped = out.join("skipped-slow.json");
    wait_for("a skipped tick told", Duration::from_secs(20), || skipped.exists());
    let body: serde_json::Value = serde_json::from_str(&read(&skipped)).unwrap();
    assert!(body["detail"]["reason"].as_str().unwrap().contains("still running"), "{body}");
    // Files that became invalid (the last valid definition goes on).
    std::fs::write(root.job_dir("triggered", "slow").join("settings.job"), r#"{"schedule": "nonsense"}"#).unwrap();
    let invalid = out.join("invalid-slow.json");
    wait_for("the invalid files told", Duration::from_secs(20), || invalid.exists());
    let body: serde_json::Value = serde_json::from_str(&read(&invalid)).unwrap();
    assert!(body["detail"]["errors"][0].as_str().unwrap().contains("schedule"), "{body}");
    assert_eq!(body["detail"]["last_valid_kept"], true);
    daemon.stop();
}

#[test]
fn an_unreachable_receiver_is_shown_with_the_reason_and_delays_no_run() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let root = Root::with_config(
        serde_json::json!({"notify": [{"on": ["succeeded"], "url": format!("http://127.0.0.1:{port}/x")}]}),
    );
    root.job("triggered", "quick", &[("run.sh", "true\n")]);
    let daemon = root.start();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert!(root.cli(&["run", "quick", "--wait"]).status.success());
    }
    assert!(started.elapsed() < Duration::from_secs(10), "runs waited for the receiver");
    wait_for("the reason shown", Duration::from_secs(10), || {
        stdout(&root.cli(&["notifications"])).to_lowercase().contains("connection refused")
    });
    let api = root.http().get("/api/notifications").json();
    assert_eq!(api["pending"].as_array().unwrap().len(), 3, "{api}");
    daemon.stop();
}

#[test]
fn https_receivers_are_reached_with_certificates_checked_unless_a_kudu_hook_says_insecure_ssl() {
    let root = Root::new();
    let (cert, key) = self_signed_certificate(root.path());
    let receiver = Receiver::start_with(&root, "", &[&cert, &key]);
    let checked = format!("https://127.0.0.1:{}/checked", receiver.port);
    root.add_config(serde_json::json!({"notify": [{"on": ["succeeded"], "url": checked}]}));
    root.job("triggered", "job", &[("run.sh", "true\n")]);
    let daemon = root.start();
    let http = root.http();
    let hook = format!("https://127.0.0.1:{}/insecure", receiver.port);
    let body = serde_json::json!({"url": hook, "event": "TriggeredJobFinished", "insecure_ssl": true}).to_string();
    assert_eq!(http.send("POST", "/api/hooks", &[("Content-Type", "application/json")], body.as_bytes()).status, 201);
    assert!(root.cli(&["run", "job", "--wait"]).status.success());
    // Over TLS to the hook that accepts any certificate.
    wait_for("the https hook", Duration::from_secs(10), || {
        receiver.delivered().iter().any(|r| r["path"] == "/insecure")
    });
    // The rule checks certificates: a self-signed one is refused, and said.
    wait_for("the certificate refused", Duration::from_secs(10), || {
        stdout(&root.cli(&["notifications"])).to_lowercase().contains("certificate")
    });
    assert!(!receiver.received().iter().any(|r| r["path"] == "/checked"));
    daemon.stop();
}
