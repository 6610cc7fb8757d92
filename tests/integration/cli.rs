//! Client commands that work without a daemon: validate, list, status.

use crate::helper::*;

#[test]
fn validate_lists_every_problem_and_exits_non_zero() {
    let root = Root::new();
    root.job("continuous", "ok", &[("run.sh", "echo hi")]);
    root.job("continuous", "bad name", &[("run.sh", "echo hi")]);
    root.job("continuous", "win", &[("run.bat", "echo hi")]);
    root.job("continuous", "empty", &[("readme.txt", "nothing")]);
    root.job(
        "triggered",
        "cron",
        &[("run.py", "print(1)"), ("settings.job", r#"{"schedule": "0 0 25 * * *", "overlap": "never", "colour": 1}"#)],
    );
    let out = root.cli(&["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for needle in [
        "ok     continuous/ok  (bash run.sh)",
        "error  continuous/bad name: invalid job name",
        "error  continuous/win: run.bat: .cmd and .bat scripts cannot run on Linux",
        "error  continuous/empty: no runnable script",
        "error  triggered/cron: ",
        "hour field: 25 is out of range 0-23",
        "key `overlap`: expected one of \"skip\", \"queue\" or \"replace\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let out = root.cli(&["validate", root.job_dir("continuous", "ok").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = root.cli(&["validate", "--json", root.job_dir("triggered", "cron").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["job"], "triggered/cron");
    assert_eq!(v[0]["errors"].as_array().unwrap().len(), 2);
    assert!(v[0]["warnings"][0].as_str().unwrap().contains("colour"));
}

#[test]
fn status_of_an_unknown_job_exits_3() {
    let root = Root::new();
    let out = root.cli(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no job named `nope`"));
}

#[test]
fn list_json_without_a_daemon() {
    let root = Root::new();
    root.job("continuous", "c", &[("run.sh", "echo hi")]);
    root.job("triggered", "t", &[("run.js", "console.log(1)")]);
    let out = root.cli(&["list", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "c");
    assert_eq!(v[0]["type"], "continuous");
    assert_eq!(v[0]["status"], "NotRunning");
    assert_eq!(v[1]["type"], "triggered");
    assert_eq!(v[1]["run_command"], "run.js");
}

#[test]
fn a_daemon_that_does_not_answer_is_named_not_waited_for_forever() {
    let root = Root::new();
    let daemon = root.start();
    daemon.signal(libc::SIGSTOP);
    let started = std::time::Instant::now();
    let out = root.cli(&["list"]);
    let took = started.elapsed();
    daemon.signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not answering (nothing within 10s)"), "{}", stderr(&out));
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    daemon.stop();
}

#[test]
fn arguments_too_long_to_send_are_a_clear_error() {
    let root = Root::new();
    root.job("triggered", "echo", &[("run.sh", "echo \"$@\"\n")]);
    let daemon = root.start();
    let long = "x".repeat(100_000);
    let out = root.cli(&["run", "echo", "--", &long]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("the arguments are too long to send"), "{}", stderr(&out));
    assert!(root.runs("echo").is_empty());
    daemon.stop();
}

#[test]
fn an_unreadable_job_folder_says_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::new();
    let dir = root.job("continuous", "locked", &[("run.sh", "echo hi")]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads any folder; without the two capabilities that allow it, it is an ordinary owner.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--bounding-set=-dac_override,-dac_read_search", BIN]);
        c
    } else {
        std::process::Command::new(BIN)
    };
    let out = command
        .arg("--root")
        .arg(root.path())
        .args(["validate", "--json"])
        .env("WEBJOBS_INSTANCE_ID", "locked-test")
        .output()
        .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    let errors = v[0]["errors"].to_string();
    assert!(errors.contains("cannot read the job folder") && errors.contains("permission denied"), "{v}");
    assert!(!errors.contains("no runnable script"), "{v}");
}

#[test]
fn bash_completion_completes_subcommands_and_options() {
    // As bash calls it: the words so far, then the command, the word being
    // completed and the one before it as arguments.
    let complete = |words: &str, cword: usize| {
        let script = format!(
            "source <('{BIN}' completions bash) && COMP_WORDS=({words}) && COMP_CWORD={cword} && \
             _webjobs webjobs \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && echo \"${{COMPREPLY[@]}}\""
        );
        let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let got = complete("webjobs sta", 1);
    let words: Vec<&str> = got.split_whitespace().collect();
    assert!(words.contains(&"start") && words.contains(&"status"), "{got}");
    assert!(!words.contains(&"stop") && !words.contains(&"run"), "{got}");
    let got = complete("webjobs completions ''", 2);
    for shell in ["bash", "zsh", "fish"] {
        assert!(got.split_whitespace().any(|w| w == shell), "{got}");
    }
    let got = complete("webjobs run job --pri", 3);
    assert!(got.contains("--priority"), "{got}");
}

#[test]
fn completions_and_the_manual_need_no_configuration_and_cover_every_command() {
    let run = |args: &[&str]| {
        // A configuration that cannot be read: not needed for these.
        let out = std::process::Command::new(BIN)
            .args(["--config", "/nonexistent/webjobs.json"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    assert!(run(&["completions", "zsh"]).starts_with("#compdef webjobs"));
    let fish = run(&["completions", "fish"]);
    assert!(fish.contains("complete -c webjobs") && fish.contains("cluster"), "{fish}");
    let man = run(&["man"]);
    assert!(man.contains(".TH webjobs 1"), "{man}");
    for command in ["serve", "list", "status", "run", "enqueue", "history", "logs", "events", "cluster", "completions"]
    {
        assert!(man.contains(command), "the manual lacks {command}");
    }
}
