//! Job logs: the exact line format, arrival order across stdout and stderr,
//! rotation, invalid UTF-8, and bounded memory for endless lines.

use std::time::Duration;

use crate::helper::*;

/// `[2026-11-21T09:30:00.123Z > inst: LEVEL] text`
fn well_formed(line: &str, instance: &str) -> bool {
    let b = line.as_bytes();
    let time_ok = b.len() > 27
        && b[0] == b'['
        && b[5] == b'-'
        && b[8] == b'-'
        && b[11] == b'T'
        && b[14] == b':'
        && b[17] == b':'
        && b[20] == b'.'
        && b[24] == b'Z'
        && line[1..24].chars().filter(char::is_ascii_digit).count() == 17;
    let rest = &line[26..];
    let levels = ["INFO", "ERROR", "SYS INFO", "SYS WARN", "SYS ERROR"];
    time_ok && levels.iter().any(|l| rest.starts_with(&format!("> {instance}: {l}] ")))
}

#[test]
fn every_line_has_the_contract_format_and_order_is_kept() {
    let root = Root::new();
    root.continuous("fmt", "for i in 1 2 3 4 5 6; do echo \"out $i\"; sleep 0.05; echo \"err $i\" >&2; sleep 0.05; done\nprintf 'no newline at the end'\necho ready >&2\nexec sleep 300\n");
    let daemon = root.start();
    wait_for("last line", Duration::from_secs(10), || root.log("fmt").contains("ERROR] ready"));
    let log = root.log("fmt");
    for line in log.lines() {
        assert!(well_formed(line, &root.instance), "bad line: {line:?}");
    }
    let out: Vec<String> = log
        .lines()
        .filter(|l| l.contains(": INFO] ") || l.contains(": ERROR] "))
        .map(|l| l.split_once("] ").unwrap().1.to_string())
        .collect();
    let expected: Vec<String> = (1..=6).flat_map(|i| [format!("out {i}"), format!("err {i}")]).collect();
    assert_eq!(out[..12], expected[..]);
    assert!(log.contains(": ERROR] err 3"));
    assert!(log.contains(&format!("> {}: SYS INFO] started process", root.instance)));
    assert!(!log.contains("no newline"), "an unfinished line waits for its end");
    daemon.stop();
    let log = root.log("fmt");
    assert!(log.contains("INFO] no newline at the end\n"), "the unfinished last line is written at exit");
}

#[test]
fn binary_output_stays_readable() {
    let root = Root::new();
    root.continuous("bin", "head -c 200000 /dev/urandom\nprintf '\\nlatin1: caf\\xe9\\n'\nexec sleep 300\n");
    let daemon = root.start();
    wait_for("latin1 line", Duration::from_secs(10), || {
        read(&root.data_dir("continuous", "bin").join("job_log.txt")).contains("latin1")
    });
    let bytes = std::fs::read(root.data_dir("continuous", "bin").join("job_log.txt")).unwrap();
    let text = String::from_utf8(bytes).expect("the log is valid UTF-8");
    assert!(text.contains("INFO] latin1: caf\\xE9"), "invalid bytes are escaped");
    for line in text.lines() {
        assert!(well_formed(line, &root.instance), "bad line: {line:?}");
    }
    daemon.stop();
}

#[test]
fn logs_rotate_by_size() {
    let root = Root::with_config(serde_json::json!({"log": {"max_size": 20000, "keep": 2}}));
    root.continuous("chatty", "for i in $(seq 1 3000); do echo \"line $i of a chatty job\"; done\nexec sleep 300\n");
    let daemon = root.start();
    let dir = root.data_dir("continuous", "chatty");
    wait_for("last line", Duration::from_secs(15), || root.log("chatty").contains("line 3000 of"));
    assert!(dir.join("job_log.1.txt").exists() && dir.join("job_log.2.txt").exists());
    assert!(!dir.join("job_log.3.txt").exists());
    for f in ["job_log.txt", "job_log.1.txt", "job_log.2.txt"] {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 20000, "{f} is {len} bytes");
    }
    // No line is lost across a rotation boundary.
    let all = format!("{}{}", read(&dir.join("job_log.1.txt")), read(&dir.join("job_log.txt")));
    let numbers: Vec<u32> =
        output_lines(&all, "INFO").iter().filter_map(|l| l.split(' ').nth(1)?.parse().ok()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "consecutive across files");
    daemon.stop();
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap()
}

#[test]
fn a_gigabyte_without_newline_is_split_with_bounded_memory() {
    let root = Root::with_config(serde_json::json!({"log": {"max_size": 8_000_000, "keep": 1, "max_line": 65536}}));
    root.continuous("huge", "head -c 1073741824 /dev/zero | tr '\\0' 'x'\necho\necho done\nexec sleep 300\n");
    let daemon = root.start();
    wait_for("the whole gigabyte", Duration::from_secs(120), || root.log("huge").contains("INFO] done"));
    let rss = peak_rss_kib(daemon.pid());
    assert!(rss < 64 * 1024, "daemon peak RSS {rss} KiB");
    let log = root.log("huge");
    let pieces: Vec<&str> = log.lines().filter(|l| l.contains("INFO] xxxx")).collect();
    assert!(!pieces.is_empty());
    assert!(pieces.iter().all(|l| l.split_once("] ").unwrap().1.len() <= 65536));
    daemon.stop();
}

#[test]
fn stdout_and_stderr_keep_the_order_they_were_written_in() {
    let root = Root::new();
    // Each pair is written back to back (both pipes readable when the daemon wakes),
    // the pairs a few milliseconds apart.
    let script = "for i in $(seq 1 60); do echo \"out $i\"; echo \"err $i\" >&2; sleep 0.01; done\nexec sleep 300\n";
    root.continuous("pairs", script);
    let daemon = root.start();
    wait_for("60 pairs", Duration::from_secs(20), || root.log("pairs").contains("ERROR] err 60"));
    let log = root.log("pairs");
    let order: Vec<String> = log
        .lines()
        .filter_map(|l| l.split_once(": INFO] ").or_else(|| l.split_once(": ERROR] ")).map(|(_, t)| t.to_string()))
        .collect();
    let swapped: Vec<usize> = (1..=60)
        .filter(|i| {
            let out = order.iter().position(|t| *t == format!("out {i}"));
            let err = order.iter().position(|t| *t == format!("err {i}"));
            !(out.is_some() && err.is_some() && out < err)
        })
        .collect();
    assert!(swapped.is_empty(), "stderr before the stdout line written first in pairs {swapped:?}:\n{log}");
    daemon.stop();
}

#[test]
fn a_log_deleted_while_in_use_is_started_again() {
    let root = Root::new();
    root.continuous("ticker", "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done\n");
    let daemon = root.start();
    let log = root.data_dir("continuous", "ticker").join("job_log.txt");
    wait_for("ticks", Duration::from_secs(10), || read(&log).contains("] tick 3"));
    std::fs::remove_file(&log).unwrap();
    wait_for("a new log", Duration::from_secs(10), || {
        let text = read(&log);
        text.contains("SYS WARN] the log file was deleted while in use") && text.contains("] tick ")
    });
    // The whole data folder too.
    std::fs::remove_dir_all(root.data_dir("continuous", "ticker")).unwrap();
    wait_for("a new folder and log", Duration::from_secs(10), || read(&log).contains("deleted while in use"));
    daemon.stop();
}

#[test]
fn lines_lost_to_a_full_disk_are_counted_once_it_has_room_again() {
    let root = Root::new();
    let count = root.path().join("count");
    root.continuous(
        "ticker",
        &format!("i=0; while true; do i=$((i+1)); echo \"tick $i\"; echo $i > {}; sleep 0.02; done\n", count.display()),
    );
    let data = root.data_dir("continuous", "ticker");
    std::fs::create_dir_all(&data).unwrap();
    let log = data.join("job_log.txt");
    // Every write to /dev/full fails with "No space left on device".
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    let daemon = root.start();
    wait_for("the daemon to say the log cannot be written", Duration::from_secs(10), || {
        daemon.stderr().contains("cannot write job log")
    });
    wait_for("20 lines lost", Duration::from_secs(10), || read(&count).trim().parse::<u64>().is_ok_and(|n| n >= 20));
    std::fs::remove_file(&log).unwrap(); // room again
    wait_for("the lost lines counted", Duration::from_secs(10), || read(&log).contains("] tick "));
    let text = read(&log);
    let first = text.lines().next().unwrap();
    let lost: u64 = first
        .split("SYS WARN] ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the first line counts the lost ones: {text}"));
    assert!(first.contains("log lines were lost from ") && first.contains("No space left on device"), "{first}");
    let first_tick: u64 = output_lines(&text, "INFO")[0].trim_start_matches("tick ").parse().unwrap();
    assert!(first_tick >= 20 && lost >= first_tick - 1, "{lost} lost, first tick kept {first_tick}:\n{text}");
    let told = daemon.stderr().matches("cannot write job log").count();
    assert_eq!(told, 1, "a repeating error is told once a minute:\n{}", daemon.stderr());
    daemon.stop();
}
