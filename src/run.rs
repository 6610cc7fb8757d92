//! One process run: spawn, capture, and the stop protocol that ends it only
//! when no process of it is left.
//!
//! Stop protocol: create the shutdown file, SIGTERM every process of the run
//! (its cgroup, or its process group and escaped grandchildren), wait up to
//! the grace period, SIGKILL them (`cgroup.kill`), and wait until none is
//! left. Output keeps flowing into the log meanwhile.
//!
//! A run is a state machine its actor drives: [`Run::over`] resolves once
//! nothing of the run is left, and is cancel-safe, so the actor awaits it in
//! its select loop beside its messages. Stopping is a state with a deadline
//! ([`Run::begin_stop`]), never an awaited procedure: while a run stops, its
//! actor answers every request, and [`Run::kill_now`] cuts the grace short.
//!
//! ```text
//!  Live ─leader exits, nothing left──────────────────────────► Draining ─► Over
//!   │  └leader exits, processes left─┐                            ▲
//!   └─begin_stop─► Terminating ──────┴─grace over─► Killing ──────┘ (none left)
//!                       └─────────────kill_now─────────┘
//! ```

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::cgroup::RunCgroup;
use crate::logs::{Level, LogFile};
use crate::output::Output;
use crate::process::{self, Command};

/// How long to wait for the pipes once every process we know of is gone:
/// something outside our reach may still hold them.
const PIPE_LEAK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long SIGKILLed processes may take to disappear before we report them.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling while a run stops starts this fine and doubles up to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Its leader runs.
    Live,
    /// SIGTERM sent: SIGKILL at `deadline` if anything is left.
    Terminating {
        deadline: tokio::time::Instant,
        grace: Duration,
    },
    /// SIGKILL sent: told stuck (and killed again) at `deadline`.
    Killing {
        deadline: tokio::time::Instant,
        told: bool,
    },
    /// Nothing left: the pipes are read to their end, for a bounded time.
    Draining {
        deadline: tokio::time::Instant,
    },
    Over,
}

/// A running process group and its output.
pub struct Run {
    child: crate::spawn::Leader,
    pub pid: Pid,
    pub output: Output,
    pub started: Instant,
    pub marker: String,
    /// The command as a user would type it.
    pub command_line: String,
    shutdown_file: PathBuf,
    /// The shutdown file was written (and is removed at the end).
    shutdown_written: bool,
    exit: Option<ExitStatus>,
    /// When the leader exited.
    exited: Option<Instant>,
    /// The run's own cgroup, when containment is by cgroup.
    cgroup: Option<RunCgroup>,
    phase: Phase,
    /// The grace period of processes left behind by a leader that exited by itself.
    grace: Duration,
    /// The next poll interval while stopping.
    poll: Duration,
}

/// What a run used, read from its cgroup when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_ms: Option<u64>,
    pub memory_peak: Option<u64>,
}

impl Run {
    /// Spawns `command`; the caller logs the start. `grace` is how long
    /// processes left behind by an exited leader get between SIGTERM and SIGKILL.
    pub fn start(
        command: &Command,
        shutdown_file: PathBuf,
        max_line: usize,
        cgroup: Option<RunCgroup>,
        grace: Duration,
    ) -> std::io::Result<Run> {
        let mut cgroup = cgroup;
        let spawned = process::spawn(command, cgroup.as_ref().and_then(RunCgroup::procs_fd))?;
        if let Some(c) = cgroup.as_mut() {
            c.entered();
        }
        let output = Output::new(spawned.stdout, spawned.stderr, max_line)?;
        Ok(Run {
            child: spawned.child,
            pid: spawned.pid,
            output,
            started: Instant::now(),
            marker: command.marker.clone(),
            command_line: command.display(),
            shutdown_file,
            shutdown_written: false,
            exit: None,
            exited: None,
            cgroup,
            phase: Phase::Live,
            grace,
            poll: POLL_MIN,
        })
    }

    /// Resolves once nothing of the run is left and its output is in `log`.
    /// Cancel-safe: all progress is kept in the run, so it is awaited in a
    /// select loop and called again.
    pub async fn over(&mut self, log: &mut LogFile) {
        loop {
            match self.phase {
                Phase::Live => {
                    tokio::select! {
                        status = self.child.wait() => {
                            self.leader_exited(status);
                            self.look_for_leftovers(log);
                        }
                        () = self.output.pump(log) => {}
                    }
                }
                Phase::Terminating { .. } | Phase::Killing { .. } => self.poll_stop(log).await,
                Phase::Draining { deadline } => {
                    if self.output.is_open() {
                        tokio::select! {
                            () = self.output.pump(log) => continue,
                            () = tokio::time::sleep_until(deadline) => {}
                        }
                    }
                    self.output.finish(log);
                    if self.shutdown_written {
                        let _ = std::fs::remove_file(&self.shutdown_file);
                    }
                    self.phase = Phase::Over;
                }
                Phase::Over => return,
            }
        }
    }

    /// Whether the stop protocol is under way (or the run is over).
    pub fn stopping(&self) -> bool {
        !matches!(self.phase, Phase::Live)
    }

    /// Starts the stop protocol: shutdown file, SIGTERM to every process of
    /// the run, SIGKILL after `grace`. Returns at once; [`Run::over`] carries
    /// it out. A run already stopping keeps its course.
    pub fn begin_stop(&mut self, log: &mut LogFile, grace: Duration, why: &str) {
        if self.phase != Phase::Live {
            return;
        }
        log.sys(
            Level::SysInfo,
            &format!(
                "stopping ({why}): shutdown file created, SIGTERM sent to process group {}, waiting up to {}",
                self.pid,
                human(grace)
            ),
        );
        self.terminate(grace);
    }

    /// SIGKILLs every process of the run now, whatever grace was left.
    pub fn kill_now(&mut self, log: &mut LogFile, why: &str) {
        if !matches!(self.phase, Phase::Live | Phase::Terminating { .. }) {
            return;
        }
        log.sys(Level::SysWarn, &format!("{why}: sending SIGKILL to every process of the run now"));
        self.kill();
    }

    /// Ends the run at once without a word (it never got going: its files
    /// could not be made), and waits for its leader.
    pub async fn discard(&mut self) {
        self.signal_all(Signal::SIGKILL);
        let status = self.child.wait().await;
        self.leader_exited(status);
        self.phase = Phase::Over;
    }

    fn leader_exited(&mut self, status: std::io::Result<ExitStatus>) {
        process::leader_reaped(self.pid);
        self.exited = Some(Instant::now());
        self.exit = Some(match status {
            Ok(status) => status,
            Err(e) => {
                // Never seen: the leader is our child, waited for through its pidfd.
                tracing::error!(pid = self.pid.as_raw(), error = %e, "cannot learn how a job's process ended");
                ExitStatus::from_raw(libc::SIGKILL)
            }
        });
    }

    /// The leader exited by itself: processes it left behind are stopped
    /// (with a warning); with none, the output is read to its end.
    fn look_for_leftovers(&mut self, log: &mut LogFile) {
        let (group, escaped) = match &self.cgroup {
            Some(cgroup) => (cgroup.populated(), Vec::new()),
            None => (process::group_alive(self.pid), process::escaped_quick(&self.marker)),
        };
        if !group && escaped.is_empty() {
            self.phase = Phase::Draining { deadline: tokio::time::Instant::now() + PIPE_LEAK_TIMEOUT };
            return;
        }
        log.sys(
            Level::SysWarn,
            "the main process exited but other processes of the job are still running; stopping them",
        );
        self.terminate(self.grace);
    }

    fn terminate(&mut self, grace: Duration) {
        self.write_shutdown_file();
        self.signal_all(Signal::SIGTERM);
        self.poll = POLL_MIN;
        self.phase = Phase::Terminating { deadline: tokio::time::Instant::now() + grace, grace };
    }

    fn kill(&mut self) {
        self.signal_all(Signal::SIGKILL);
        self.poll = POLL_MIN;
        self.phase = Phase::Killing { deadline: tokio::time::Instant::now() + KILL_TIMEOUT, told: false };
    }

    /// Whether any process of this run is left: its cgroup is populated; or,
    /// without one, its group or any process carrying its marker lives.
    fn remaining(&self) -> (bool, Vec<Pid>) {
        match &self.cgroup {
            Some(cgroup) => (cgroup.populated(), Vec::new()),
            None => (process::group_alive(self.pid), process::marked_exactly(&self.marker)),
        }
    }

    /// One step of a stop: done when nothing is left; past the deadline,
    /// SIGKILL (and, if even that does not end them, say so, and go on
    /// killing: a run never ends while its processes live); else wait a
    /// little, reading output and the leader's end meanwhile.
    async fn poll_stop(&mut self, log: &mut LogFile) {
        if self.exit.is_some() {
            process::reap_adopted();
            let (group, escaped) = self.remaining();
            if !group && escaped.is_empty() {
                self.phase = Phase::Draining { deadline: tokio::time::Instant::now() + PIPE_LEAK_TIMEOUT };
                return;
            }
            if matches!(self.phase, Phase::Terminating { .. }) {
                // Late escapees get the signal the others got.
                process::signal_all(&escaped, Signal::SIGTERM);
            }
        }
        let now = tokio::time::Instant::now();
        let deadline = match self.phase {
            Phase::Terminating { deadline, grace } if now >= deadline => {
                let what = match &self.cgroup {
                    Some(c) => format!("every process of cgroup {} (cgroup.kill)", c.name()),
                    None => format!("process group {} and the run's escaped processes", self.pid),
                };
                log.sys(Level::SysWarn, &format!("still running after {}; sending SIGKILL to {what}", human(grace)));
                return self.kill();
            }
            Phase::Killing { deadline, told } if now >= deadline => {
                if !told {
                    self.tell_stuck(log);
                }
                self.signal_all(Signal::SIGKILL);
                self.phase = Phase::Killing { deadline: now + KILL_TIMEOUT, told: true };
                return;
            }
            Phase::Terminating { deadline, .. } | Phase::Killing { deadline, .. } => deadline,
            _ => return,
        };
        let wake = (now + self.poll).min(deadline);
        tokio::select! {
            status = self.child.wait(), if self.exit.is_none() => self.leader_exited(status),
            () = self.output.pump(log) => {}
            () = tokio::time::sleep_until(wake) => self.poll = (self.poll * 2).min(POLL_MAX),
        }
    }

    fn tell_stuck(&self, log: &mut LogFile) {
        let left: Vec<i32> = match &self.cgroup {
            Some(c) => c.pids(),
            None => process::marked_exactly(&self.marker),
        }
        .iter()
        .map(|p| p.as_raw())
        .collect();
        log.sys(
            Level::SysError,
            &format!(
                "processes {left:?} of the run survived SIGKILL for {}; they may be stuck in the kernel (the run stays open until they are gone)",
                human(KILL_TIMEOUT)
            ),
        );
    }

    /// `signal` to every process of the run: its cgroup, its group, and (without
    /// a cgroup) every process that carries its marker, wherever it went.
    fn signal_all(&self, signal: Signal) {
        process::signal_group(self.pid, signal);
        match &self.cgroup {
            Some(cgroup) if signal == Signal::SIGKILL => cgroup.kill(),
            Some(cgroup) => cgroup.signal(signal),
            None => process::signal_all(&process::marked_exactly(&self.marker), signal),
        }
    }

    fn write_shutdown_file(&mut self) {
        self.shutdown_written = true;
        if let Some(parent) = self.shutdown_file.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&self.shutdown_file, crate::logs::format_time(std::time::SystemTime::now()));
    }

    /// How long the leader ran (until now while it runs).
    pub fn uptime(&self) -> Duration {
        self.exited.unwrap_or_else(Instant::now).duration_since(self.started)
    }

    /// What the run used (from its cgroup), and the cgroup removed. Call once
    /// the run is over.
    pub fn finish_usage(&mut self) -> Usage {
        let Some(cgroup) = self.cgroup.take() else { return Usage::default() };
        Usage { cpu_ms: cgroup.cpu_usec().map(|u| u / 1000), memory_peak: cgroup.memory_peak() }
    }

    /// CPU time used so far by the run's processes, in clock ticks or
    /// microseconds (only compared with itself): how the idle timeout tells a
    /// busy silent job from a stuck one.
    pub fn cpu_so_far(&self) -> u64 {
        match self.cgroup.as_ref().and_then(RunCgroup::cpu_usec) {
            Some(usec) => usec,
            None => process::group_cpu_ticks(self.pid),
        }
    }

    /// How the leader ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// How the leader ended, for log lines and status.
    pub fn describe_exit(&self) -> String {
        self.exit.map(describe).unwrap_or_else(|| "still running".into())
    }
}

/// "exit code 3" or "signal SIGKILL".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {}", process::signal_name(sig)),
        _ => "unknown status".into(),
    }
}

/// `1.5s`, `2m`, `250ms`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A loopback port free right now, as Kudu picks `WEBJOBS_PORT`: the kernel
/// assigns an ephemeral port to a TCP socket bound to port 0, which is then
/// closed. (No `listen`: the bind alone reserves the port, at half the cost.)
pub fn free_port() -> Option<u16> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).ok()?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, 0)).ok()?;
    getsockname::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&fd)).ok().map(|a| a.port())
}

/// Environment entries every job process gets (§4 of the contract).
pub struct JobEnv<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub work_dir: &'a std::path::Path,
    pub data_dir: &'a std::path::Path,
    pub run_id: &'a str,
    pub arguments: &'a str,
    pub shutdown_file: &'a std::path::Path,
    /// Continuous jobs: a free loopback port for `…/passthrough/` (Kudu's `WEBJOBS_PORT`).
    pub port: Option<u16>,
}

impl JobEnv<'_> {
    pub fn vars(&self, extra: &std::collections::BTreeMap<String, String>) -> Vec<(OsString, OsString)> {
        let mut vars: Vec<(OsString, OsString)> =
            extra.iter().filter(|(k, _)| !k.starts_with("WEBJOBS_")).map(|(k, v)| (k.into(), v.into())).collect();
        let ours = [
            ("WEBJOBS_NAME", OsString::from(self.name)),
            ("WEBJOBS_TYPE", self.kind.into()),
            ("WEBJOBS_PATH", self.work_dir.into()),
            ("WEBJOBS_DATA_PATH", self.data_dir.into()),
            ("WEBJOBS_RUN_ID", self.run_id.into()),
            ("WEBJOBS_COMMAND_ARGUMENTS", self.arguments.into()),
            ("WEBJOBS_SHUTDOWN_FILE", self.shutdown_file.into()),
        ];
        vars.extend(ours.into_iter().map(|(k, v)| (OsString::from(k), v)));
        if let Some(port) = self.port {
            vars.push(("WEBJOBS_PORT".into(), port.to_string().into()));
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn a_free_port_is_a_loopback_port_nobody_holds() {
        let port = free_port().unwrap();
        assert!(port > 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("free to bind");
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal SIGKILL");
    }
}
