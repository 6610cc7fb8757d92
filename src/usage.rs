//! CPU time and memory of jobs' process groups, read from `/proc` (for
//! `webjobs top` and the dashboard). A job's process is the leader of its own
//! process group, so the group holds what it started (unless a child made a
//! session of its own; cgroup containment still stops those, see `cgroup`).

use std::collections::{HashMap, HashSet};

/// What one process group uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub processes: u32,
    /// User + system CPU time of the live processes, milliseconds.
    pub cpu_ms: u64,
    /// Resident memory of the live processes, bytes.
    pub memory_bytes: u64,
}

/// The usage of each of `groups` (process group ids) that has a process.
/// One pass over `/proc`, whatever the number of groups.
pub fn by_group(groups: &HashSet<i32>) -> HashMap<i32, Usage> {
    let mut found = HashMap::new();
    if groups.is_empty() {
        return found;
    }
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (ticks.max(1) as u64, page.max(1) as u64);
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().first().is_some_and(u8::is_ascii_digit) {
            continue;
        }
        // A process may end between the listing and the read: skipped.
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(stat) = Stat::parse(&text) else { continue };
        if groups.contains(&stat.group) {
            let u: &mut Usage = found.entry(stat.group).or_default();
            u.processes += 1;
            u.cpu_ms += stat.cpu_ticks * 1000 / ticks;
            u.memory_bytes += stat.rss_pages * page;
        }
    }
    found
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    group: i32,
    cpu_ticks: u64,
    rss_pages: u64,
}

impl Stat {
    /// Parses a stat line; the command name (in parentheses) may hold
    /// spaces and parentheses, so fields are counted after the last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // After the name: state(0) ppid(1) pgrp(2) … utime(11) stime(12) … rss(21).
        let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
        Some(Stat { group: fields.get(2)?.parse().ok()?, cpu_ticks: number(11)? + number(12)?, rss_pages: number(21)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_an_odd_command_name() {
        let line = "4242 (my (odd) job) S 1 4242 4242 0 -1 4194560 120 0 0 0 25 7 0 0 20 0 1 0 \
                    123456 10485760 640 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(Stat::parse(line), Some(Stat { group: 4242, cpu_ticks: 32, rss_pages: 640 }));
        assert_eq!(Stat::parse("4242 (cut"), None);
    }

    #[test]
    fn a_process_group_is_found_with_its_processes_and_memory() {
        use std::os::unix::process::CommandExt;
        let mut child =
            std::process::Command::new("sh").args(["-c", "sleep 30 & sleep 30"]).process_group(0).spawn().expect("sh");
        let group = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let usage = loop {
            let usage = by_group(&HashSet::from([group])).remove(&group).unwrap_or_default();
            if usage.processes == 3 || std::time::Instant::now() > deadline {
                break usage;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        assert_eq!(usage.processes, 3, "sh and its two sleeps");
        assert!(usage.memory_bytes > 100_000, "{usage:?}");
        assert!(by_group(&HashSet::from([i32::MAX])).is_empty());
    }
}
