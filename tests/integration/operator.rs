//! The operator's commands against a running daemon: `list`, `status`,
//! `restart`, `logs`, `top`, and the errors people meet (a job of the other
//! type, a mistyped name). Tables and colour are checked as a terminal shows
//! them (in a pseudo-terminal) and as a pipe gets them.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helper::*;

/// A command run in a pseudo-terminal of `cols` × `rows`: what it shows, as it shows it.
struct Terminal {
    child: Child,
    master: std::fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn run(root: &Root, args: &[&str], cols: u16, rows: u16) -> Terminal {
        let size = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        let child = Command::new(BIN)
            .arg("--root")
            .arg(root.path())
            .arg("--config")
            .arg(root.config_path())
            .args(args)
            .env("WEBJOBS_INSTANCE_ID", &root.instance)
            .env_remove("NO_COLOR")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, shown) = (master.try_clone().unwrap(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            // EIO once the command and every copy of the terminal's other end are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, master, screen }
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write;
        self.master.write_all(keys).unwrap();
    }

    fn wait(&mut self) -> Option<i32> {
        let mut code = None;
        wait_for("the command to end", Duration::from_secs(10), || {
            code = self.child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code
    }
}

/// The lines of `text` without colour codes and carriage returns.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut escape = false;
    for c in text.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, c) if c.is_ascii_alphabetic() => escape = false,
            (true, _) | (false, '\r') => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    let line =
        table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in\n{table}"));
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
}

#[test]
fn list_shows_pids_uptime_restarts_and_times_as_people_and_scripts_need_them() {
    let root = Root::new();
    root.continuous("steady", "echo up; exec sleep 600\n");
    root.job(
        "continuous",
        "crashy",
        &[("run.sh", "echo dying >&2; exit 3\n"), ("settings.job", r#"{"restart_delay": 1, "max_restart_delay": 60}"#)],
    );
    root.job("triggered", "tick", &[("run.sh", "echo tick\n"), ("settings.job", r#"{"schedule": "0 0 0 1 1 *"}"#)]);
    // A cron error longer than any terminal line.
    let long = format!("0 0 {} * * *", "1,".repeat(60) + "99");
    root.job("triggered", "broken", &[("run.sh", "true\n"), ("settings.job", &format!(r#"{{"schedule": "{long}"}}"#))]);
    let daemon = root.start();
    let out = root.cli(&["run", "tick", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("crashy to be restarted twice", Duration::from_secs(20), || {
        let s = root.status("crashy");
        s["Status"] == "PendingRestart" && s["Restarts"].as_u64() >= Some(2)
    });

    // Piped: no colour, nothing cut, relative times.
    let table = stdout(&root.cli(&["list"]));
    assert!(!table.contains('\x1b'), "no colour into a pipe:\n{table}");
    let pid = root.status("steady")["Pid"].as_i64().unwrap().to_string();
    let steady = row(&table, "steady");
    assert_eq!(steady[..4], ["steady", "continuous", "Running", pid.as_str()], "{table}");
    assert!(steady[4].ends_with('s') || steady[4].ends_with('m'), "uptime: {table}");
    assert_eq!(steady[5], "0", "restarts: {table}");
    let crashy = row(&table, "crashy");
    assert_eq!(crashy[2], "PendingRestart", "{table}");
    assert!(crashy[5].parse::<u32>().unwrap() >= 2, "restart count: {table}");
    assert_eq!(crashy[6], "exit code 3", "last exit: {table}");
    assert!(crashy[7].starts_with("restart in ") || crashy[7] == "restart now", "next restart: {table}");
    let tick = row(&table, "tick");
    assert!(tick[2] == "Success" && (tick[6] == "Success now" || tick[6].ends_with(" ago")), "{table}");
    assert!(tick[7].starts_with("in ") && tick[7].contains('d'), "next run, days away: {table}");
    assert!(table.contains(&format!("{}99", "1,".repeat(60))), "a pipe gets the whole DETAIL:\n{table}");

    let utc = stdout(&root.cli(&["list", "--utc"]));
    let next = row(&utc, "tick")[7];
    assert!(next.contains('T') && next.ends_with(":00:00Z"), "--utc: absolute times: {utc}");

    // The API view carries the same, for scripts.
    let jobs: serde_json::Value = serde_json::from_slice(&root.cli(&["list", "--json"]).stdout).unwrap();
    let steady = jobs.as_array().unwrap().iter().find(|j| j["name"] == "steady").unwrap();
    assert_eq!(steady["pid"].to_string(), pid);
    assert!(steady["started"].is_string() && steady["restarts"] == 0, "{steady}");
    let status: serde_json::Value = serde_json::from_slice(&root.cli(&["status", "crashy", "--json"]).stdout).unwrap();
    assert!(status["restarts"].as_u64() >= Some(2) && status["next_restart"].is_string(), "{status}");
    assert_eq!(status["last_exit"], "exit code 3");
    assert!(status["folder"].as_str().unwrap().ends_with("jobs/continuous/crashy"), "{status}");
    assert_eq!(status["instances"][0]["Status"], "PendingRestart");
    let tick: serde_json::Value = serde_json::from_slice(&root.cli(&["status", "tick", "--json"]).stdout).unwrap();
    assert!(tick["next_run"].as_str().unwrap().ends_with(":00:00Z"), "{tick}");

    // On a terminal 80 columns wide: coloured, and DETAIL cut to fit; `status` has it whole.
    let mut terminal = Terminal::run(&root, &["list"], 80, 24);
    assert_eq!(terminal.wait(), Some(0));
    wait_for("the table on the terminal", Duration::from_secs(5), || terminal.shown().contains("tick"));
    let shown = terminal.shown();
    assert!(shown.contains("\x1b[32mRunning\x1b[0m") && shown.contains("\x1b[33mPendingRestart\x1b[0m"), "{shown:?}");
    assert!(shown.contains("\x1b[31mInvalid\x1b[0m"), "{shown:?}");
    for line in plain(&shown).lines() {
        assert!(line.chars().count() <= 80, "wider than the terminal: {line:?}");
    }
    assert!(plain(&shown).lines().any(|l| l.starts_with("broken ") && l.ends_with('…')), "{shown}");
    let whole = stdout(&root.cli(&["status", "broken"]));
    assert!(whole.contains("99") && whole.contains("out of range"), "{whole}");
    // NO_COLOR turns colour off even on a terminal; --color always turns it on in a pipe.
    let mut no_color = Command::new(BIN);
    no_color.args(["--root", root.path().to_str().unwrap(), "--config", root.config_path().to_str().unwrap(), "list"]);
    let out = no_color.env("NO_COLOR", "1").env("WEBJOBS_INSTANCE_ID", &root.instance).output().unwrap();
    assert!(!stdout(&out).contains('\x1b'));
    assert!(stdout(&root.cli(&["--color", "always", "list"])).contains("\x1b[32mRunning"));
    daemon.stop();
}

#[test]
fn restart_gives_a_continuous_job_a_new_process_and_wrong_types_and_names_are_explained() {
    let root = Root::new();
    root.continuous("beat", "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 0.1; done\n");
    root.job("triggered", "report", &[("run.sh", "echo report\n")]);
    let daemon = root.start();
    wait_for("beat to run", Duration::from_secs(10), || root.status_is("beat", "Running"));
    let before = root.status("beat")["Pid"].as_i64().unwrap();
    let out = root.cli(&["restart", "beat"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Once the command returns, the status file shows the new process too.
    let after = root.status("beat")["Pid"].as_i64().unwrap();
    assert_ne!(before, after);
    assert!(stdout(&out).contains(&format!("restarted (pid {after}, Running)")), "{}", stdout(&out));
    assert!(!alive(before as i32), "the old process is gone");
    let log = root.log("beat");
    assert!(log.contains("got TERM") && log.contains("restart asked"), "stopped by the stop protocol:\n{log}");

    // The other type's commands.
    let out = root.cli(&["restart", "report"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`report` is a triggered job; use run, cancel"), "{}", stderr(&out));
    for args in [&["run", "beat"][..], &["history", "beat"], &["cancel", "beat"], &["enqueue", "beat"]] {
        let out = root.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("`beat` is a continuous job; use start, stop or restart"), "{}", stderr(&out));
    }
    // A mistyped name: the closest ones.
    let out = root.cli(&["status", "baet"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("did you mean `beat`?"), "{}", stderr(&out));
    let out = root.cli(&["run", "reprot"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("no triggered job named `reprot`") && stderr(&out).contains("did you mean `report`?")
    );
    // Restarting a stopped job says how to start it.
    assert!(root.cli(&["stop", "beat"]).status.success());
    let out = root.cli(&["restart", "beat"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("it is stopped") && stderr(&out).contains("use start"), "{}", stderr(&out));
    daemon.stop();
}

#[test]
fn logs_shows_the_tail_filtered_and_follows_from_the_tail() {
    let root = Root::new();
    // 500 numbered lines on stdout, then every tenth number on stderr, then `done`;
    // then a line per `go` file that appears.
    root.continuous(
        "talker",
        "for i in $(seq 1 500); do echo \"out $i\"; done; sleep 0.3\n\
         for i in $(seq 10 10 500); do echo \"err $i\" >&2; done; sleep 0.3; echo done\n\
         n=0; while true; do if [ -e go ]; then rm go; n=$((n+1)); echo \"live $n\"; fi; sleep 0.02; done\n",
    );
    root.job("triggered", "once", &[("run.sh", "echo \"run $1\"\n")]);
    let daemon = root.start();
    wait_for("the lines", Duration::from_secs(10), || root.log("talker").contains("INFO] done"));
    let texts = |out: &str| out.lines().map(|l| l.rsplit("] ").next().unwrap().to_string()).collect::<Vec<_>>();

    let out = stdout(&root.cli(&["logs", "talker"]));
    let lines = texts(&out);
    assert_eq!(lines.len(), 20, "20 lines by default:\n{out}");
    assert_eq!([lines[0].as_str(), lines[18].as_str(), lines[19].as_str()], ["err 320", "err 500", "done"], "{out}");
    let out = stdout(&root.cli(&["logs", "talker", "-n", "3", "--stderr"]));
    assert_eq!(texts(&out), ["err 480", "err 490", "err 500"], "{out}");
    let out = stdout(&root.cli(&["logs", "talker", "--lines", "2", "--stdout"]));
    assert_eq!(texts(&out), ["out 500", "done"], "{out}");
    assert!(!stdout(&root.cli(&["logs", "talker", "--since", "1h"])).is_empty());
    assert!(stdout(&root.cli(&["logs", "talker", "--since", "2099-01-01T00:00:00Z"])).is_empty());
    let out = root.cli(&["logs", "talker", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Following: the last two lines, then what is written, not the whole file again.
    let mut follow = Command::new(BIN)
        .args(["--root", root.path().to_str().unwrap(), "--config", root.config_path().to_str().unwrap()])
        .args(["logs", "--all", "-f", "-n", "2"])
        .env("WEBJOBS_INSTANCE_ID", &root.instance)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let (mut pipe, shown) = (follow.stdout.take().unwrap(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    wait_for("the tail", Duration::from_secs(5), || seen.lock().unwrap().contains("INFO] done"));
    let workdir =
        root.status("talker")["Pid"].as_i64().map(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap());
    std::fs::write(workdir.unwrap().join("go"), "").unwrap();
    wait_for("a live line of talker", Duration::from_secs(5), || {
        seen.lock().unwrap().contains("talker | [") && seen.lock().unwrap().contains("live 1")
    });
    assert!(root.cli(&["run", "once", "--wait", "--", "first"]).status.success());
    wait_for("the run's output, named", Duration::from_secs(5), || {
        seen.lock().unwrap().contains("once | ") && seen.lock().unwrap().contains("run first")
    });
    assert!(root.cli(&["run", "once", "--wait", "--", "second"]).status.success());
    wait_for("the next run's output", Duration::from_secs(5), || seen.lock().unwrap().contains("run second"));
    // A job that appears meanwhile is followed too.
    root.continuous("late", "echo late arrival; exec sleep 300\n");
    wait_for("the new job's log", Duration::from_secs(10), || {
        seen.lock().unwrap().contains("late | ") && seen.lock().unwrap().contains("late arrival")
    });
    let _ = follow.kill();
    let _ = follow.wait();
    let text = seen.lock().unwrap().clone();
    assert!(text.contains("err 500") && !text.contains("err 490"), "from the tail, not the whole file:\n{text}");
    assert_eq!(text.matches("live 1").count(), 1, "{text}");
    daemon.stop();
}

#[test]
fn top_shows_each_jobs_cpu_and_memory_live_and_quits_cleanly() {
    let root = Root::new();
    root.continuous("busy", "while true; do :; done\n");
    root.continuous("idle", "exec sleep 600\n");
    let daemon = root.start();
    wait_for("both to run", Duration::from_secs(10), || {
        root.status_is("busy", "Running") && root.status_is("idle", "Running")
    });
    let mut terminal = Terminal::run(&root, &["top", "--interval", "0.3"], 100, 20);
    // After the second reading the busy job's share of a core is known.
    wait_for("busy's CPU share", Duration::from_secs(10), || {
        let shown = plain(&terminal.shown());
        shown.lines().filter(|l| l.starts_with("busy ")).any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(4).and_then(|c| c.parse::<f64>().ok()).is_some_and(|cpu| cpu > 20.0)
        })
    });
    let shown = plain(&terminal.shown());
    assert!(shown.contains("2 jobs: 2 Running"), "{shown}");
    let idle = shown.lines().rev().find(|l| l.starts_with("idle ")).unwrap();
    let cells: Vec<&str> = idle.split_whitespace().collect();
    assert!(cells[4].parse::<f64>().unwrap() < 5.0, "idle uses no CPU: {idle}");
    assert!(cells[5].ends_with('K') || cells[5].ends_with('M'), "memory of the group: {idle}");
    terminal.type_keys(b"q");
    assert_eq!(terminal.wait(), Some(0));
    let raw = terminal.shown();
    assert!(raw.contains("\x1b[?1049h") && raw.ends_with("\x1b[?25h\x1b[?1049l"), "the screen is put back: {raw:?}");
    // Not on a terminal: one view.
    let once = root.cli(&["top"]);
    assert!(once.status.success() && stdout(&once).contains("busy") && !stdout(&once).contains('\x1b'));
    daemon.stop();
}
