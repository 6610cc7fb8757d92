//! systemd integration: READY=1 once jobs are loaded, watchdog pings, and
//! the unit file passes `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::helper::*;

#[test]
fn notifies_ready_and_pings_the_watchdog() {
    let root = Root::new();
    root.continuous("job", "exec sleep 300\n");
    let socket_path = root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let daemon = Daemon::start(&root, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")]);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 3) {
        let n = socket.recv(&mut buf).expect("a notification within 10s");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(
        root.status_is("job", "Running") || root.status_is("job", "Starting"),
        "READY comes after the jobs are loaded"
    );
    let job_env = std::fs::read(format!("/proc/{}/environ", daemon.job_pids("job")[0])).unwrap();
    assert!(!String::from_utf8_lossy(&job_env).contains("NOTIFY_SOCKET"), "jobs do not inherit systemd's socket");
    daemon.stop();
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze must be installed in CI");
        eprintln!("systemd-analyze is not installed; skipped");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/webjobs.service")).unwrap();
    // Verify a copy whose ExecStart points at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace("/usr/bin/webjobs", BIN);
    let path = dir.path().join("webjobs.service");
    std::fs::write(&path, unit).unwrap();
    // (The manual page it names is installed by the package; see `package`.)
    let out = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("webjobs.service:"), "warnings about the unit: {text}");
}

/// The exposure score `systemd-analyze security` gives a unit file (0 best, 10 worst).
pub fn exposure(unit: &std::path::Path) -> f64 {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = stdout(&out);
    let line =
        text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}{}", stderr(&out)));
    line.split(": ").nth(1).and_then(|v| v.split_whitespace().next()).unwrap().parse().unwrap()
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_4() {
    if std::process::Command::new("systemd-analyze").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze must be installed in CI");
        return;
    }
    let unit = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/webjobs.service"));
    let score = exposure(unit);
    assert!(score <= 4.0, "systemd-analyze security: {score} (at most 4.0)");
    // Every option that leaves something open says why, next to it.
    let text = std::fs::read_to_string(unit).unwrap();
    for open in ["ProtectControlGroups", "MemoryDenyWriteExecute", "PrivateNetwork", "ProcSubset", "PrivateUsers"] {
        let said = text.lines().any(|l| l.starts_with('#') && l.contains(&format!("{open}=")));
        assert!(said, "{open} left open without a reason");
    }
}

/// The unit's `SystemCallFilter=@system-service` cannot be tried here (no
/// systemd as PID 1), so what it would refuse is checked instead: the daemon
/// and bash, python3 and node jobs, traced through starts, output, payloads,
/// results, a restart and a stop, call nothing outside the set.
#[test]
fn the_daemon_and_its_jobs_use_only_the_system_calls_the_unit_allows() {
    let tools =
        ["strace", "systemd-analyze"].iter().all(|t| std::process::Command::new(t).arg("--version").output().is_ok());
    if !tools {
        assert!(std::env::var_os("CI").is_none(), "strace and systemd-analyze must be installed in CI (scripts/test)");
        return;
    }
    let allowed = syscall_set("@system-service");
    assert!(allowed.len() > 300 && allowed.contains("openat"), "{allowed:?}");

    let root = Root::new();
    root.continuous("talker", "trap 'exit 0' TERM; while true; do echo out; echo err >&2; sleep 0.1; done\n");
    root.job("triggered", "py", &[("run.py", "import json, os, sys\nprint(sys.stdin.read())\njson.dump({'ok': True}, open(os.environ['WEBJOBS_RESULT_FILE'], 'w'))\n")]);
    root.job("triggered", "js", &[("run.js", "console.log('hello from node'); console.error('and stderr');\n")]);
    let trace = root.path().join("trace");
    let log = std::fs::File::create(root.path().join("daemon.log")).unwrap();
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(BIN)
        .arg("--root")
        .arg(root.path())
        .arg("--config")
        .arg(root.config_path())
        .arg("serve")
        .env("WEBJOBS_INSTANCE_ID", &root.instance)
        .env("WEBJOBS_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("the traced daemon", Duration::from_secs(30), || {
        read(&root.path().join("daemon.log")).contains("webjobs is running")
    });
    wait_for("talker", Duration::from_secs(20), || root.log("talker").contains("ERROR] err"));
    let out = root.cli(&["run", "py", "--payload", "a payload", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = root.cli(&["run", "js", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.cli(&["restart", "talker"]).status.success());
    // The daemon is strace's child: SIGTERM to it, then strace ends with it.
    let daemon = std::fs::read_to_string(format!("/proc/{}/task/{}/children", strace.id(), strace.id())).unwrap();
    let pid: i32 = daemon.split_whitespace().next().unwrap().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("the daemon to stop", Duration::from_secs(30), || strace.try_wait().unwrap().is_some());

    let text = read(&trace);
    let used: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest.trim_start()))
        .filter_map(|call| call.split_once('(').map(|(name, _)| name))
        .filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_string)
        .collect();
    assert!(used.contains("execve") && (used.contains("clone3") || used.contains("clone")), "{used:?}");
    // node probes memory protection keys and goes on without them when refused.
    let refused: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c) && *c != "pkey_alloc").collect();
    assert!(refused.is_empty(), "outside @system-service (EPERM under the unit): {refused:?}");
}

/// The system calls of a `systemd-analyze syscall-filter` group, nested groups expanded.
fn syscall_set(group: &str) -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new("systemd-analyze").arg("syscall-filter").output().unwrap();
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in stdout(&out).lines() {
        if line.starts_with('@') {
            current = line.split_whitespace().next().map(str::to_string);
            groups.entry(current.clone().unwrap()).or_default();
        } else if let Some(g) = &current
            && !line.trim().is_empty()
            && !line.trim().starts_with('#')
        {
            groups.get_mut(g).unwrap().push(line.trim().to_string());
        }
    }
    let mut set = std::collections::BTreeSet::new();
    let mut todo = vec![group.to_string()];
    let mut seen = std::collections::HashSet::new();
    while let Some(g) = todo.pop() {
        if !seen.insert(g.clone()) {
            continue;
        }
        for member in groups.get(&g).into_iter().flatten() {
            if member.starts_with('@') {
                todo.push(member.clone())
            } else {
                set.insert(member.clone());
            }
        }
    }
    set
}
