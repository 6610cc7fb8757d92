//! One process run: spawn, capture, and the stop protocol that ends it only
//! when no process of it is left.
//!
//! Stop protocol: create the shutdown file, SIGTERM every process of the run
//! (its cgroup, or its process group and escaped grandchildren), wait up to
//! the grace period, SIGKILL them (`cgroup.kill`), and wait until none is
//! left. Output keeps flowing into the log meanwhile.

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
    exit: Option<ExitStatus>,
    /// The run's own cgroup, when containment is by cgroup.
    cgroup: Option<RunCgroup>,
}

/// What a run used, read from its cgroup when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_ms: Option<u64>,
    pub memory_peak: Option<u64>,
}

impl Run {
    /// Spawns `command`; the caller logs the start.
    pub fn start(
        command: &Command,
        shutdown_file: PathBuf,
        max_line: usize,
        cgroup: Option<RunCgroup>,
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
            exit: None,
            cgroup,
        })
    }

    /// Waits for the leader to exit, moving output to `log` meanwhile.
    pub async fn wait_leader(&mut self, log: &mut LogFile) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        loop {
            tokio::select! {
                status = self.child.wait() => return self.leader_exited(status),
                () = self.output.pump(log) => {}
            }
        }
    }

    /// Waits for the leader without capturing output (a run being abandoned).
    pub async fn wait_leader_quietly(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await;
        process::leader_reaped(self.pid);
        status
    }

    fn leader_exited(&mut self, status: std::io::Result<ExitStatus>) -> ExitStatus {
        let status = status.unwrap_or_else(|_| ExitStatus::from_raw(0x7f00));
        process::leader_reaped(self.pid);
        self.exit = Some(status);
        status
    }

    /// Whether any process of this run is left: its cgroup is populated; or,
    /// without one, its group or any process carrying its marker lives.
    fn remaining(&self) -> (bool, Vec<Pid>) {
        match &self.cgroup {
            Some(cgroup) => (cgroup.populated(), Vec::new()),
            None => (process::group_alive(self.pid), process::marked_exactly(&self.marker)),
        }
    }

    /// Ends whatever is left of the run after its leader exited by itself.
    /// Returns true when leftovers had to be stopped.
    pub async fn reap_leftovers(&mut self, log: &mut LogFile, grace: Duration) -> bool {
        let (group, escaped) = match &self.cgroup {
            Some(cgroup) => (cgroup.populated(), Vec::new()),
            None => (process::group_alive(self.pid), process::escaped_quick(&self.marker)),
        };
        if !group && escaped.is_empty() {
            self.drain(log).await;
            return false;
        }
        log.sys(
            Level::SysWarn,
            "the main process exited but other processes of the job are still running; stopping them",
        );
        self.terminate(log, grace).await;
        true
    }

    /// The full stop protocol. `why` goes into the log line.
    pub async fn stop(&mut self, log: &mut LogFile, grace: Duration, why: &str) {
        log.sys(
            Level::SysInfo,
            &format!(
                "stopping ({why}): shutdown file created, SIGTERM sent to process group {}, waiting up to {}",
                self.pid,
                human(grace)
            ),
        );
        self.terminate(log, grace).await;
    }

    async fn terminate(&mut self, log: &mut LogFile, grace: Duration) {
        self.write_shutdown_file();
        self.signal_all(Signal::SIGTERM);
        if !self.wait_gone(log, grace).await {
            let what = match &self.cgroup {
                Some(c) => format!("every process of cgroup {} (cgroup.kill)", c.name()),
                None => format!("process group {} and the run's escaped processes", self.pid),
            };
            log.sys(Level::SysWarn, &format!("still running after {}; sending SIGKILL to {what}", human(grace)));
            self.signal_all(Signal::SIGKILL);
            if !self.wait_gone(log, KILL_TIMEOUT).await {
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
                // Never claim the run ended while its processes live.
                while !self.wait_gone(log, KILL_TIMEOUT).await {
                    self.signal_all(Signal::SIGKILL);
                }
            }
        }
        self.drain(log).await;
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

    /// Polls (briefly, only while stopping) until nothing of the run is left.
    async fn wait_gone(&mut self, log: &mut LogFile, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut tick = Duration::from_millis(5);
        loop {
            if self.exit.is_some() {
                process::reap_adopted();
                let (group, escaped) = self.remaining();
                if !group && escaped.is_empty() {
                    return true;
                }
                // Late escapees get the signal the others got.
                process::signal_all(&escaped, Signal::SIGTERM);
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let sleep = tokio::time::sleep_until((tokio::time::Instant::now() + tick).min(deadline));
            tokio::select! {
                status = self.child.wait(), if self.exit.is_none() => { self.leader_exited(status); }
                () = self.output.pump(log) => {}
                () = sleep => tick = (tick * 2).min(Duration::from_millis(100)),
            }
        }
    }

    /// Reads the pipes to their end, for a bounded time.
    async fn drain(&mut self, log: &mut LogFile) {
        let deadline = tokio::time::sleep(PIPE_LEAK_TIMEOUT);
        tokio::pin!(deadline);
        while self.output.is_open() {
            tokio::select! {
                () = self.output.pump(log) => {}
                () = &mut deadline => break,
            }
        }
        self.output.finish(log);
        let _ = std::fs::remove_file(&self.shutdown_file);
    }

    fn write_shutdown_file(&self) {
        if let Some(parent) = self.shutdown_file.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&self.shutdown_file, crate::logs::format_time(std::time::SystemTime::now()));
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
