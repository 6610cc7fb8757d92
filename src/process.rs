//! Job processes: one spawn recipe, one process group per run, and the means
//! to find every process of a run, including those that left the group.
//!
//! The daemon is a child subreaper: a job's grandchildren that daemonize (and
//! so leave its process group with `setsid`) are re-parented to the daemon, not
//! to init. Every job process carries a marker in its environment
//! (`WEBJOBS_RUN_MARKER`), so the daemon recognises them, now or after a crash.
//! Tokio reaps the run leaders; [`reap_adopted`] reaps everything else.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The environment variable that tags every process of a run.
pub const MARKER_VAR: &str = "WEBJOBS_RUN_MARKER";

/// What to execute.
#[derive(Debug, Clone)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// Added to the daemon's own environment.
    pub env: Vec<(OsString, OsString)>,
    /// Value of [`MARKER_VAR`].
    pub marker: String,
    /// A descriptor the process keeps, as fd 3: a singleton's lock, so that
    /// the lock lasts as long as the run, even if the daemon is killed.
    pub inherit: Option<std::os::fd::RawFd>,
    /// The file the process reads as stdin (/dev/null when `None`).
    pub stdin: Option<PathBuf>,
    /// SIGKILLed when the daemon dies (`PR_SET_PDEATHSIG`): a run under a
    /// database lease, which another daemon takes over once this one is gone.
    pub die_with_daemon: bool,
}

impl Command {
    /// The command line as a user would type it (for log lines).
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(|a| a.as_os_str()))
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A started run: the leader (also the process group id) and its output pipes.
pub struct Spawned {
    pub child: crate::spawn::Leader,
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Prepares the daemon process: become a subreaper, clear the signal mask
/// so that every thread, and so every job, starts with nothing blocked, and
/// tune the allocator.
pub fn init_daemon_process() {
    tune_allocator();
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => SUBREAPER.store(true, std::sync::atomic::Ordering::Release),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot become a child subreaper; daemonizing grandchildren are found by their marker only"
        ),
    }
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// glibc's allocator, for a daemon that holds many small things for long
/// and makes a few large short-lived buffers (a job list of 10,000 jobs is
/// 12 MB of JSON): two arenas rather than one per thread that ever
/// allocated (each keeps what was freed in it), and buffers from 256 KiB up
/// always mapped on their own, so that they go back to the system when freed
/// (glibc otherwise raises that threshold to the largest buffer freed, and
/// the next ones come from the heap, which keeps them). At 10,000 jobs: peak
/// RSS 108 MB rather than 160 MB with the list served under load. To be
/// called before any thread starts.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; no thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Starts `command` as the leader of a new process group, stdin from
/// /dev/null, stdout and stderr into two fresh pipes. With `cgroup_procs`
/// (an open `cgroup.procs`), the child enters that cgroup before it execs
/// (see [`crate::spawn`]).
pub fn spawn(command: &Command, cgroup_procs: Option<std::os::fd::RawFd>) -> io::Result<Spawned> {
    use std::os::fd::AsRawFd;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // A larger pipe lets a chatty job write on while the daemon is busy; best effort.
    let _ = nix::fcntl::fcntl(&out_r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(256 * 1024));
    let payload = command.stdin.as_deref().map(std::fs::File::open).transpose()?;
    let stdin = match &payload {
        Some(file) => file.as_raw_fd(),
        None => dev_null()?,
    };
    let prepared = crate::spawn::Prepared::new(&command.program, &command.args, &command.cwd, environment(command))?;
    let stdio = crate::spawn::Stdio {
        stdin,
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        cgroup_procs,
        keep: command.inherit,
        die_with_parent: command.die_with_daemon,
    };
    // Held across the spawn: the orphan reaper never sees a leader it does not know.
    let mut leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    let child = crate::spawn::spawn(&prepared, &stdio)?;
    leaders.insert(child.pid.as_raw());
    drop(leaders);
    Ok(Spawned { pid: child.pid, child, stdout: out_r, stderr: err_r })
}

/// The daemon's environment, the job's, and the run marker; systemd's
/// variables are the daemon's, not its jobs'.
fn environment(command: &Command) -> Vec<(OsString, OsString)> {
    let skip = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", MARKER_VAR];
    let mut env: std::collections::BTreeMap<OsString, OsString> =
        std::env::vars_os().filter(|(k, _)| !skip.iter().any(|s| k == s)).collect();
    env.extend(command.env.iter().cloned());
    env.insert(MARKER_VAR.into(), command.marker.clone().into());
    env.into_iter().collect()
}

use crate::spawn::LEADERS;
pub use crate::spawn::leader_reaped;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // A new pipe's read end has no status flag but O_RDONLY: set, not read and set.
    nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
    Ok((r, w))
}

/// `/dev/null`, opened once for every job's stdin.
fn dev_null() -> io::Result<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    static DEV_NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(file) = DEV_NULL.get() {
        return Ok(file.as_raw_fd());
    }
    let file = std::fs::File::open("/dev/null")?;
    Ok(DEV_NULL.get_or_init(|| file).as_raw_fd())
}

/// Sends `signal` to every process of group `pgid`.
pub fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, error = %e, "cannot signal process group")
        }
    }
}

/// Whether any process (zombies included) is left in group `pgid`.
pub fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Processes adopted by the daemon (re-parented orphans) that belong to the run
/// with `marker`: the grandchildren that escaped the group.
pub fn escaped(marker: &str) -> Vec<Pid> {
    marked_among(own_children(), marker)
}

/// Like [`escaped`], looking only where the kernel puts orphans: the children
/// of the daemon's main thread (the first live thread of a subreaper). One
/// small read, for the common check after a process exited by itself.
pub fn escaped_quick(marker: &str) -> Vec<Pid> {
    let main = std::process::id();
    match std::fs::read_to_string(format!("/proc/self/task/{main}/children")) {
        Ok(text) => marked_among(children_in(&text), marker),
        Err(_) => escaped(marker),
    }
}

/// The pids among `children` that are not run leaders and carry `marker`.
fn marked_among(children: Vec<Pid>, marker: &str) -> Vec<Pid> {
    let leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    children
        .into_iter()
        .filter(|pid| !leaders.contains(&pid.as_raw()))
        .filter(|pid| marker_of(*pid).as_deref() == Some(marker))
        .collect()
}

fn children_in(text: &str) -> Vec<Pid> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid::from_raw).collect()
}

/// Signals each pid; they are processes we recognised by marker a moment ago.
pub fn signal_all(pids: &[Pid], signal: Signal) {
    for pid in pids {
        let _ = kill(*pid, signal);
    }
}

/// Direct children of the daemon, from `/proc/self/task/*/children`.
fn own_children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(children_in(&text));
        }
    }
    pids
}

/// The run marker in a process's environment, if readable.
pub fn marker_of(pid: Pid) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARKER_VAR}=");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Whether this process adopts orphans. Only then does it reap children it
/// did not spawn: a daemon run inside another program (a test, an embedder)
/// leaves that program's own children to it.
static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn adopts_orphans() -> bool {
    SUBREAPER.load(std::sync::atomic::Ordering::Acquire)
}

/// Reaps adopted orphans that have exited (never a run leader: tokio owns those).
pub fn reap_adopted() {
    if !adopts_orphans() {
        return;
    }
    let leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    for pid in own_children() {
        if leaders.contains(&pid.as_raw()) {
            continue;
        }
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
}

/// Reaps exited adopted orphans on every SIGCHLD, for the life of the daemon.
/// It peeks (`WNOWAIT`) at the next exited child and reaps it only if it is
/// not a run leader; a leader ends the round (tokio reaps it, and the stop
/// protocol does a full sweep with [`reap_adopted`]).
pub fn spawn_reaper() -> io::Result<tokio::task::JoinHandle<()>> {
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    Ok(tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            reap_exited_orphans();
        }
    }))
}

fn reap_exited_orphans() {
    use nix::sys::wait::{Id, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    while adopts_orphans() {
        let leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = match waitid(Id::All, flags) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => return,
            },
        };
        if leaders.contains(&pid.as_raw()) {
            return;
        }
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
}

/// Every process on the machine carrying exactly `marker`, wherever it went
/// (its own group or session included): the escapees of one run.
pub fn marked_exactly(marker: &str) -> Vec<Pid> {
    find_marked(marker).into_iter().filter(|(_, m)| m == marker).map(|(pid, _)| pid).collect()
}

/// Every process on the machine whose marker starts with `prefix`: what a
/// previous daemon left behind. A pid reused by an unrelated process carries
/// no marker and is never matched.
pub fn find_marked(prefix: &str) -> Vec<(Pid, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let marker = marker_of(Pid::from_raw(pid))?;
            marker.starts_with(prefix).then(|| (Pid::from_raw(pid), marker))
        })
        .collect()
}

/// CPU time (clock ticks, children included) used so far by the processes
/// of group `pgid`: how the idle timeout tells a busy silent job from a stuck one.
pub fn group_cpu_ticks(pgid: Pid) -> u64 {
    let mut snapshot = CPU_BY_GROUP.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = snapshot.as_ref().is_some_and(|(at, _)| at.elapsed() < CPU_SNAPSHOT_AGE);
    if !fresh {
        *snapshot = Some((std::time::Instant::now(), cpu_by_group()));
    }
    snapshot.as_ref().and_then(|(_, by_group)| by_group.get(&pgid.as_raw()).copied()).unwrap_or(0)
}

/// Without cgroups, the CPU time of a group is only known by reading every
/// process: one reading of `/proc` serves every quiet run for this long
/// (instead of one reading per run per check).
const CPU_SNAPSHOT_AGE: std::time::Duration = std::time::Duration::from_millis(250);

type CpuByGroup = Option<(std::time::Instant, std::collections::HashMap<i32, u64>)>;
static CPU_BY_GROUP: std::sync::Mutex<CpuByGroup> = std::sync::Mutex::new(None);

/// CPU ticks (children included) of every process group, from one pass over `/proc`.
fn cpu_by_group() -> std::collections::HashMap<i32, u64> {
    let mut by_group = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return by_group };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let Some(pgid) = fields.get(2).and_then(|g| g.parse::<i32>().ok()) else { continue };
        let ticks = [11, 12, 13, 14].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum::<u64>();
        *by_group.entry(pgid).or_insert(0) += ticks;
    }
    by_group
}

/// The process group of `pid`, if it still exists.
pub fn pgid_of(pid: Pid) -> Option<Pid> {
    nix::unistd::getpgid(Some(pid)).ok()
}

/// A signal's name for log lines ("SIGKILL").
pub fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_display() {
        let c = Command {
            program: "/usr/bin/bash".into(),
            args: vec!["run.sh".into(), "a b".into(), "it's".into()],
            cwd: "/".into(),
            env: vec![],
            marker: String::new(),
            inherit: None,
            stdin: None,
            die_with_daemon: false,
        };
        assert_eq!(c.display(), "/usr/bin/bash run.sh 'a b' 'it'\\''s'");
    }

    #[tokio::test]
    async fn spawn_makes_a_group_and_marks_the_environment() {
        let c = Command {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep 30 & wait".into()],
            cwd: "/".into(),
            env: vec![],
            marker: "test-marker-xyz".into(),
            inherit: None,
            stdin: None,
            die_with_daemon: false,
        };
        init_daemon_process();
        let mut s = spawn(&c, None).unwrap();
        assert_eq!(pgid_of(s.pid), Some(s.pid));
        // The kernel fills in the new program's environment just after the
        // vfork parent resumes, so give it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while marker_of(s.pid).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(marker_of(s.pid).as_deref(), Some("test-marker-xyz"));
        assert!(group_alive(s.pid));
        signal_group(s.pid, Signal::SIGKILL);
        s.child.wait().await.unwrap();
        leader_reaped(s.pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while group_alive(s.pid) && std::time::Instant::now() < deadline {
            reap_adopted();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!group_alive(s.pid));
    }
}
