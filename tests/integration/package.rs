//! The Debian package (`scripts/package`, cargo-deb): built from the release
//! binary, its files and maintainer scripts checked in a scratch root
//! (`dpkg-deb -x`), and — as root on a machine where webjobs is not
//! installed — installed with dpkg and purged again, checking what each step
//! leaves.

use std::path::Path;
use std::process::Command;

use crate::helper::*;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

#[test]
fn the_debian_package_installs_the_service_and_removes_cleanly() {
    let release = Path::new(MANIFEST).join("target/release/webjobs");
    let tools = Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !tools || !release.exists() || Command::new("dpkg-deb").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI installs cargo-deb and builds the release binary (scripts/test)");
        eprintln!("cargo-deb, dpkg-deb or the release binary is missing; skipped");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    run(Command::new(Path::new(MANIFEST).join("scripts/package")).args(["--no-build", "--output"]).arg(out.path()));
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let deb = deb.expect("a .deb");

    // The control data.
    let fields = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args(["Package", "Depends", "Recommends"]));
    assert!(fields.contains("Package: webjobs") && fields.contains("adduser"), "{fields}");
    assert!(fields.contains("python3") && fields.contains("nodejs"), "what the examples need: {fields}");
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path().join("DEBIAN")));
    let read = |name: &str| std::fs::read_to_string(control.path().join("DEBIAN").join(name)).unwrap();
    assert_eq!(read("conffiles").trim(), "/etc/webjobs/webjobs.json");
    let postinst = read("postinst");
    assert!(postinst.contains("adduser --system") && postinst.contains("deb-systemd-helper enable webjobs.service"));
    assert!(read("prerm").contains("webjobs.service"), "stopped before removal");
    assert!(read("postrm").contains("rm -rf /var/lib/webjobs /etc/webjobs"), "purge removes the state");

    // The files, in a scratch root.
    let scratch = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(scratch.path()));
    let file = |path: &str| scratch.path().join(path);
    let version = run(Command::new(file("usr/bin/webjobs")).arg("--version"));
    assert_eq!(version.trim(), format!("webjobs {}", env!("CARGO_PKG_VERSION")));
    let unit = std::fs::read_to_string(file("usr/lib/systemd/system/webjobs.service")).unwrap();
    assert_eq!(unit, std::fs::read_to_string(Path::new(MANIFEST).join("systemd/webjobs.service")).unwrap());
    assert!(unit.contains("ExecStart=/usr/bin/webjobs serve --config /etc/webjobs/webjobs.json"));
    let score = crate::systemd::exposure(&file("usr/lib/systemd/system/webjobs.service"));
    assert!(score <= 4.0, "the packaged unit's exposure: {score}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file("etc/webjobs/webjobs.json")).unwrap()).unwrap();
    assert_eq!(config["root"], "/var/lib/webjobs");
    let man = run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {}", file("usr/share/man/man1/webjobs.1.gz").display())));
    assert!(man.contains(".TH webjobs 1") && man.contains("restart"), "the manual page");
    for path in [
        "usr/share/bash-completion/completions/webjobs",
        "usr/share/zsh/vendor-completions/_webjobs",
        "usr/share/fish/vendor_completions.d/webjobs.fish",
        "usr/share/doc/webjobs/README.md",
        "usr/share/webjobs/settings.job.schema.json",
    ] {
        assert!(file(path).is_file(), "{path} is in the package");
    }

    // Installed for real where that changes nothing anybody had.
    let root = unsafe { libc::geteuid() } == 0;
    let installed = Command::new("dpkg").args(["-s", "webjobs"]).output().is_ok_and(|o| o.status.success());
    if !root || installed || Path::new("/var/lib/webjobs").exists() {
        eprintln!("not root, or webjobs already on this machine: the install itself is not tried");
        return;
    }
    run(Command::new("dpkg").arg("-i").arg(&deb).env("DEBIAN_FRONTEND", "noninteractive"));
    let purge = Purge;
    run(Command::new("getent").args(["passwd", "webjobs"]));
    let owner = run(Command::new("stat").args([
        "-c",
        "%U:%G %a",
        "/var/lib/webjobs/jobs/continuous",
        "/etc/webjobs/webjobs.json",
    ]));
    assert_eq!(owner.lines().collect::<Vec<_>>(), ["webjobs:webjobs 750", "root:webjobs 640"], "{owner}");
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/webjobs.service");
    assert!(wants.symlink_metadata().is_ok(), "the service is enabled");
    // The installed command finds the installed configuration.
    let validate = run(Command::new("/usr/bin/webjobs").arg("validate").current_dir("/"));
    assert!(validate.contains("/var/lib/webjobs/jobs") || validate.contains("no jobs"), "{validate}");
    drop(purge);
    for gone in ["/usr/bin/webjobs", "/usr/lib/systemd/system/webjobs.service", "/etc/webjobs", "/var/lib/webjobs"] {
        assert!(Path::new(gone).symlink_metadata().is_err(), "{gone} is left after purge");
    }
    assert!(wants.symlink_metadata().is_err(), "the enable link is left after purge");
}

/// Purges the package however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "webjobs"]).output();
    }
}
