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
