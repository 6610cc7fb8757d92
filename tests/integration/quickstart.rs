//! The README's quick start, run as a newcomer runs it: its first command as
//! written (`cargo run --release -- serve`, the default relative root), from a
//! copy of the checkout, and every example job doing what the README says.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helper::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The first command of the README's "Start in two commands" block.
fn first_command(readme: &str) -> String {
    let section = readme.split("## Start in two commands").nth(1).expect("the README has its quick start");
    let block = section.split("```sh").nth(1).expect("a sh block").split("```").next().unwrap();
    let line = block.lines().map(str::trim).find(|l| !l.is_empty()).expect("a first command");
    line.split('#').next().unwrap().trim().to_string()
}

/// A command the README gives inline, in backticks, starting with `start`.
fn inline_command(readme: &str, start: &str) -> String {
    let at = readme.find(&format!("`{start}")).unwrap_or_else(|| panic!("the README shows `{start}…`"));
    readme[at + 1..].split('`').next().unwrap().to_string()
}

/// The lines of the first `sh` block after `heading` in `text`.
fn sh_block(text: &str, heading: &str) -> Vec<String> {
    let section = text.split(heading).nth(1).unwrap_or_else(|| panic!("the document has {heading}"));
    let block = section.split("```sh").nth(1).expect("a sh block").split("```").next().unwrap();
    block.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// The checkout without its build output and state.
fn copy_checkout(to: &Path) {
    for entry in fs::read_dir(REPO).unwrap().flatten() {
        let name = entry.file_name();
        if ["target", "data", "temp", ".git"].iter().any(|n| name == *n) {
            continue;
        }
        let status = Command::new("cp").arg("-a").arg(entry.path()).arg(to).status().unwrap();
        assert!(status.success());
    }
}

/// Runs `command` with `sh -c` in `dir`, as typed in a terminal there.
fn shell(dir: &Path, command: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(command).current_dir(dir).env("CARGO_TARGET_DIR", Path::new(REPO).join("target"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WEBJOBS_") {
            c.env_remove(k);
        }
    }
    c
}

/// Runs `lines` in one shell, as typed one after the other in a terminal;
/// each must succeed. What each printed.
fn in_one_shell(dir: &Path, lines: &[String]) -> Vec<String> {
    const END: &str = "@@ line done @@";
    let script: String = lines.iter().map(|l| format!("{l} || exit $?\necho '{END}'\n")).collect();
    let out = shell(dir, &script).output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let outputs: Vec<String> = text.split(&format!("{END}\n")).map(str::to_string).collect();
    assert_eq!(outputs.len(), lines.len() + 1, "{text}");
    outputs
}

/// Runs each line as typed, one after the other; each must succeed. Their outputs.
fn run_lines(dir: &Path, path: &str, lines: &[String]) -> Vec<String> {
    let mut outputs = Vec::new();
    for line in lines {
        let out = shell(dir, line).env("PATH", path).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{line}: {}{}", stdout(&out), stderr(&out));
        outputs.push(stdout(&out));
    }
    outputs
}

/// Milliseconds since midnight of a log line's stamp `[2026-11-21T09:30:00.123Z > …`.
fn stamp_ms(line: &str) -> u64 {
    let t = &line[12..24];
    let (h, m, s) = (&t[0..2], &t[3..5], &t[6..12]);
    let secs: f64 = s.parse().unwrap();
    h.parse::<u64>().unwrap() * 3_600_000 + m.parse::<u64>().unwrap() * 60_000 + (secs * 1000.0) as u64
}

#[test]
fn readme_quick_start_runs_every_example_job() {
    let readme = fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let serve = first_command(&readme);
    assert_eq!(serve, "cargo run --release -- serve", "the test runs what the README says");
    let copy = tempfile::Builder::new().prefix("webjobs-quickstart-").tempdir().unwrap();
    copy_checkout(copy.path());
    let dir = copy.path().to_path_buf();
    // The build output stays the checkout's (no second build from scratch):
    // `cargo run` is pointed at it (CARGO_TARGET_DIR), and `./target` is it.
    std::os::unix::fs::symlink(Path::new(REPO).join("target"), dir.join("target")).unwrap();
    let stderr_path = dir.join("serve.log");
    let mut daemon = shell(&dir, &serve)
        .env("WEBJOBS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = daemon.id() as i32;
    let _guard = GroupGuard(group);
    wait_for("the daemon to build and start", Duration::from_secs(500), || {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("`{serve}` exited with {status}:\n{}", read(&stderr_path));
        }
        read(&stderr_path).contains("webjobs is running")
    });
    let data = dir.join("data/jobs");
    // The root is resolved once: every path handed to a job is absolute.
    let heartbeat = data.join("continuous/heartbeat/job_log.txt");
    wait_for("heartbeat on stdout and stderr", Duration::from_secs(30), || {
        let log = read(&heartbeat);
        log.contains(": INFO] heartbeat 1 from heartbeat")
            && log.contains(": ERROR] heartbeat 5: this line goes to stderr")
    });

    // node-greet: the README's own command.
    let greet = inline_command(&readme, "cargo run --release -- run node-greet");
    let out = shell(&dir, &greet).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{greet}: {}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("hello, Ada Lovelace!") && text.contains("hello, Grace!"), "{text}");
    assert!(text.contains(r#"WEBJOBS_COMMAND_ARGUMENTS="Ada Lovelace" Grace"#), "{text}");

    // py-report: scheduled every 5 minutes; run now, it writes its report into its data folder.
    let list = shell(&dir, "cargo run --release -- list --json").output().unwrap();
    let jobs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let report_job = jobs.as_array().unwrap().iter().find(|j| j["name"] == "py-report").expect("py-report listed");
    let next: jiff::Timestamp = report_job["next_run"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.as_second() % 300, 0, "every 5 minutes: {next}");
    assert_eq!(jobs.as_array().unwrap().len(), 5, "the example jobs: {jobs}");
    let out = shell(&dir, "cargo run --release -- run py-report --wait").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Success"), "{}", stdout(&out));
    let report: serde_json::Value =
        serde_json::from_str(&read(&data.join("triggered/py-report/last_report.json"))).expect("the report");
    assert!(report["run"].is_string());

    // The README's first job, typed line after line in one shell (its own
    // `export PATH=…` finds the binary), no waiting for the watcher in between.
    let lines = sh_block(&readme, "## Your first job in five minutes");
    assert_eq!(lines.len(), 7, "{lines:?}");
    let outputs = in_one_shell(&dir, &lines);
    assert!(outputs[3].contains("Success"), "run --wait: {}", outputs[3]);
    assert!(outputs[4].contains("INFO] hello, Ada") && outputs[4].contains("ERROR] a warning"), "{}", outputs[4]);
    let path = format!("{}:{}", Path::new(REPO).join("target/release").display(), std::env::var("PATH").unwrap());
    wait_for("hello's schedule in the list", Duration::from_secs(10), || {
        let list = shell(&dir, "webjobs list").env("PATH", &path).output().unwrap();
        stdout(&list).lines().any(|l| l.starts_with("hello ") && l.contains(" in "))
    });
    wait_for("a scheduled run of hello", Duration::from_secs(15), || {
        let history = shell(&dir, "webjobs history hello --json").env("PATH", &path).output().unwrap();
        let runs: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap_or_default();
        runs["runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|run| run["trigger"].as_str().unwrap_or("").starts_with("Schedule")))
    });

    // The run queue's examples (docs/jobs.md), each line as written.
    let jobs_doc = fs::read_to_string(Path::new(REPO).join("docs/jobs.md")).unwrap();
    let lines = sh_block(&jobs_doc, "### The run queue");
    assert_eq!(lines.len(), 7, "{lines:?}");
    let outputs = run_lines(&dir, &path, &lines);
    let waited: serde_json::Value = serde_json::from_str(&outputs[3]).expect("run --wait --json");
    assert_eq!(waited["status"], "Success", "{waited}");
    assert_eq!(waited["result"], serde_json::json!({"order": 44, "total": 0}));
    assert_eq!(waited["progress"]["percent"], 100.0);
    let invoices = data.join("triggered/py-invoice");
    let results = |order: u64| {
        fs::read_dir(&invoices)
            .unwrap()
            .flatten()
            .filter_map(|e| read(&e.path().join("status")).parse::<serde_json::Value>().ok())
            .filter(|s| s["Result"]["order"] == order)
            .map(|s| s["Result"]["total"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    wait_for("the queued orders priced", Duration::from_secs(20), || results(42).len() == 2 && results(43).len() == 1);
    assert_eq!(results(42), [12.0, 12.0], "from the file, once by enqueue and once by curl");
    assert_eq!(results(43), [2.0], "from stdin");
    assert!(outputs[5].contains("External"), "the one-off run waits in the queue: {}", outputs[5]);
    assert!(outputs[6].contains("no dead requests"), "{}", outputs[6]);

    // py-worker: stops by itself within a second of a stop, having seen the shutdown file.
    let worker = data.join("continuous/py-worker/job_log.txt");
    wait_for("py-worker to work", Duration::from_secs(20), || read(&worker).contains("processed item 2"));
    let out = shell(&dir, "cargo run --release -- stop py-worker").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let log = read(&worker);
    let stop = log.lines().find(|l| l.contains("stopping (disable.job is present)")).expect("the stop line");
    let bye = log.lines().find(|l| l.contains("worker stopping (shutdown file)")).expect("the worker saw the file");
    assert!(stamp_ms(bye) - stamp_ms(stop) < 1000, "{stop}\n{bye}");
    assert!(!log.contains("SIGKILL"), "{log}");

    assert!(dir.join("data/api-token").is_file(), "the dashboard's token");
    // Ctrl-C stops every job cleanly.
    unsafe { libc::kill(-group, libc::SIGINT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // (The shell in front of cargo dies of the SIGINT itself, as it does in a terminal.)
    while daemon.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the daemon did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(read(&stderr_path).contains("all jobs stopped; bye"), "{}", read(&stderr_path));
    assert!(read(&heartbeat).contains("heartbeat: SIGTERM received, bye"));
    assert!(!read(&heartbeat).contains("SIGKILL"));
    let left = processes_with_env(&format!("WEBJOBS_DATA_PATH={}/", data.display()));
    assert!(left.is_empty(), "job processes left after Ctrl-C: {left:?}");
}

/// Live processes whose environment has an entry starting with `prefix`.
fn processes_with_env(prefix: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if !is_zombie(pid) && env.split(|b| *b == 0).any(|kv| kv.starts_with(prefix.as_bytes())) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills a process group when the test ends, however it ends.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}
