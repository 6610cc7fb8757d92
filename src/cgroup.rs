//! Containment by cgroup v2: every run in a cgroup of its own, so that nothing
//! it starts can escape the stop protocol (a child in its own process group or
//! session, with a cleared environment, that ignores SIGTERM is still in the
//! cgroup). Stop = SIGTERM to every process of the cgroup, then `cgroup.kill`;
//! a run is over when `cgroup.events` says `populated 0`. A daemon that died
//! leaves its run cgroups behind, and its next start ends what is in them.
//!
//! Layout: `<cgroup2 mount><the daemon's cgroup>/webjobs-<instance>.<hash>/`
//! holds the run cgroups: `<kind>.<job>`, used by one run after the other (a
//! job runs one process tree at a time on a daemon; creating and removing a
//! cgroup per run would cost more than the rest of a start), or, where the
//! memory controller is enabled (so that `memory.peak` is the run's own),
//! `<kind>.<job>.<nonce>` per run. Under systemd the unit
//! has `Delegate=yes`, so the daemon may create cgroups below its own. When no
//! cgroup can be had (no cgroup2, no permission), the daemon says so and keeps
//! process groups and run markers ([`Containment::ProcessGroups`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Controllers the limits of settings.job need (`memory_max`, `cpu_max`, `tasks_max`).
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// How this daemon contains its runs.
#[derive(Debug)]
pub enum Containment {
    Cgroup(Root),
    /// No cgroup could be had: process groups and run markers only.
    ProcessGroups {
        why: String,
    },
}

/// The daemon's folder of run cgroups.
#[derive(Debug)]
pub struct Root {
    pub dir: PathBuf,
    /// Controllers enabled for runs (a subset of [`CONTROLLERS`]).
    pub controllers: Vec<String>,
    /// The kernel has `cgroup.kill` (5.14+); else every process is SIGKILLed.
    pub kill_file: bool,
}

/// Resource limits for one run's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `cpu.max` as a number of CPUs (0.5 = half of one).
    pub cpu_max: Option<f64>,
    /// `pids.max`.
    pub tasks_max: Option<u64>,
}

impl Limits {
    /// Each limit set, with its controller and the file and value to write.
    fn entries(&self) -> Vec<(&'static str, &'static str, &'static str, String)> {
        let mut out = Vec::new();
        if let Some(bytes) = self.memory_max {
            out.push(("memory_max", "memory", "memory.max", bytes.to_string()));
        }
        if let Some(cpus) = self.cpu_max {
            let period = 100_000u64;
            out.push(("cpu_max", "cpu", "cpu.max", format!("{} {period}", ((cpus * period as f64) as u64).max(1000))));
        }
        if let Some(tasks) = self.tasks_max {
            out.push(("tasks_max", "pids", "pids.max", tasks.to_string()));
        }
        out
    }
}

impl Containment {
    /// Finds a cgroup v2 hierarchy where this daemon may create run cgroups,
    /// under a folder named `name`. `enabled` = false (config `cgroups: false`) skips it.
    pub fn detect(name: &str, enabled: bool) -> Containment {
        if !enabled {
            return Containment::ProcessGroups { why: "cgroups are turned off in the configuration".into() };
        }
        match Root::create(name) {
            Ok(root) => Containment::Cgroup(root),
            Err(why) => Containment::ProcessGroups { why },
        }
    }

    /// One line for the daemon's log, `webjobs status` and the API.
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup(root) => format!(
                "cgroup v2: each run in its own cgroup under {} ({}; controllers for limits: {})",
                root.dir.display(),
                if root.kill_file { "stopped with cgroup.kill" } else { "no cgroup.kill: every process SIGKILLed" },
                if root.controllers.is_empty() { "none".to_string() } else { root.controllers.join(", ") }
            ),
            Containment::ProcessGroups { why } => format!(
                "process groups and run markers (no cgroup: {why}); a process that leaves its group and clears its environment can escape a stop"
            ),
        }
    }

    /// A short name for JSON: `cgroup` or `process-group`.
    pub fn kind(&self) -> &'static str {
        match self {
            Containment::Cgroup(_) => "cgroup",
            Containment::ProcessGroups { .. } => "process-group",
        }
    }

    /// The cgroup for a new run of job `job` (`<kind>.<name>`; none when
    /// containment is by process groups), with `limits` applied. Limits without
    /// cgroups or without their controller are an error: the job does not run
    /// unlimited by mistake.
    /// With `own`, the run gets a cgroup of its own even without the memory
    /// controller (runs of one job side by side must not share one: the end
    /// of one would stop what is left in it).
    pub fn new_run(&self, job: &str, nonce: &str, limits: &Limits, own: bool) -> io::Result<Option<RunCgroup>> {
        match self {
            Containment::Cgroup(root) => root.new_run(job, nonce, limits, own).map(Some),
            Containment::ProcessGroups { why } => match limits.entries().first() {
                Some((key, ..)) => Err(io::Error::other(format!(
                    "{key} needs a cgroup v2 of the daemon's own, and there is none here ({why})"
                ))),
                None => Ok(None),
            },
        }
    }
}

impl Root {
    fn create(name: &str) -> Result<Root, String> {
        let mount = mount_point().ok_or("no cgroup2 file system is mounted")?;
        let own = own_path().ok_or("this process's cgroup v2 path is unknown (/proc/self/cgroup)")?;
        let parent = mount.join(own.trim_start_matches('/'));
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let controllers = enable_controllers(&parent, &dir, &own);
        let kill_file = dir.join("cgroup.kill").exists();
        Ok(Root { dir, controllers, kill_file })
    }

    fn new_run(&self, job: &str, nonce: &str, limits: &Limits, own: bool) -> io::Result<RunCgroup> {
        for (key, controller, ..) in limits.entries() {
            if !self.controllers.iter().any(|c| c == controller) {
                return Err(io::Error::other(format!(
                    "{key} needs the cgroup v2 `{controller}` controller, which is not available to the daemon's cgroup {} (enabled: {}); under systemd, Delegate=yes gives it",
                    self.dir.display(),
                    if self.controllers.is_empty() { "none".to_string() } else { self.controllers.join(", ") }
                )));
            }
        }
        let per_run = own || self.controllers.iter().any(|c| c == "memory");
        let dir = if per_run { self.dir.join(format!("{job}.{nonce}")) } else { self.dir.join(job) };
        let open_procs = || OpenOptions::new().write(true).open(dir.join("cgroup.procs"));
        // A job's cgroup made for an earlier run is used as it is (one open, no mkdir).
        let existing = if per_run { None } else { open_procs().ok() };
        if existing.is_none() {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create the run's cgroup {}: {e}", dir.display()),
                    ));
                }
            }
        }
        for (key, _, file, value) in limits.entries() {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| io::Error::other(format!("{key}: cannot write {value} to {file}: {e}")))?;
        }
        let procs = match existing {
            Some(procs) => procs,
            None => open_procs()?,
        };
        let mut run = RunCgroup { dir, procs: Some(procs), kill_file: self.kill_file, cpu_base: 0, per_run };
        run.cpu_base = run.cpu_total().unwrap_or(0);
        Ok(run)
    }

    /// Removes the run cgroups (each empty once its run ended) and the
    /// daemon's folder: a daemon that stops cleanly leaves nothing.
    pub fn remove_all(&self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(entry.path());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// SIGKILLs every process of every run (`cgroup.kill` of each run cgroup).
    pub fn kill_all(&self) {
        for run in self.leftovers() {
            run.kill();
        }
    }

    /// Run cgroups left by a previous life of this daemon (it was killed).
    pub fn leftovers(&self) -> Vec<RunCgroup> {
        let entries = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        entries
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| RunCgroup { dir: e.path(), procs: None, kill_file: self.kill_file, cpu_base: 0, per_run: true })
            .collect()
    }
}

/// Turns on, for the runs, the controllers the daemon's cgroup has. Where
/// they are not yet enabled below the daemon's own cgroup (systemd's
/// `Delegate=yes` makes them available but not enabled), the daemon first
/// moves itself into a leaf (`daemon`), as cgroup v2 allows controllers only
/// for cgroups without processes of their own (the root excepted).
fn enable_controllers(parent: &Path, dir: &Path, own: &str) -> Vec<String> {
    let listed = |p: &Path| std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<&str> =
        CONTROLLERS.iter().copied().filter(|c| listed(parent).split_whitespace().any(|x| x == *c)).collect();
    let enabled_at_parent = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<&str> =
        wanted.iter().copied().filter(|c| !enabled_at_parent.split_whitespace().any(|x| x == *c)).collect();
    if !missing.is_empty() {
        if own != "/" && !own.is_empty() {
            let leaf = parent.join("daemon");
            let _ = std::fs::create_dir_all(&leaf);
            let _ = std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string());
        }
        for c in &missing {
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    for c in CONTROLLERS {
        if listed(dir).split_whitespace().any(|x| x == c) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    enabled.split_whitespace().filter(|c| CONTROLLERS.contains(c)).map(str::to_string).collect()
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` beside v1).
fn mount_point() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Whether cgroup2 is mounted with `favordynmods` (`None`: no cgroup2 mount).
/// Without it, each process entering a cgroup takes the kernel's cgroup
/// migration lock the slow way (an RCU grace period, about 0.5 ms here), and
/// a burst of starts (20 jobs on one tick) queues behind it.
pub fn favors_dynamic_changes() -> Option<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (_, right) = line.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        (fields.next()? == "cgroup2").then(|| fields.nth(1).is_some_and(|opts| opts.contains("favordynmods")))
    })
}

/// This process's cgroup v2 path (`0::/system.slice/webjobs.service`).
fn own_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim().to_string())
}

/// One run's cgroup.
#[derive(Debug)]
pub struct RunCgroup {
    pub dir: PathBuf,
    /// `cgroup.procs`, open for the child to enter before it execs.
    procs: Option<File>,
    kill_file: bool,
    /// `usage_usec` when the run started (the cgroup may have served runs before).
    cpu_base: u64,
    /// Created for this run alone: removed when it is let go.
    per_run: bool,
}

impl RunCgroup {
    /// The fd a new child writes `0` to, to enter this cgroup.
    pub fn procs_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The child is in: `cgroup.procs` need not stay open.
    pub fn entered(&mut self) {
        self.procs = None;
    }

    /// Whether any process is left in the cgroup.
    pub fn populated(&self) -> bool {
        match read_small(&self.dir.join("cgroup.events")) {
            Ok(text) => text.lines().any(|l| l == "populated 1"),
            Err(_) => false,
        }
    }

    pub fn pids(&self) -> Vec<Pid> {
        let text = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        text.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid::from_raw).collect()
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal(&self, signal: Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// SIGKILL to everything in the cgroup, at once (`cgroup.kill`), or to each process.
    pub fn kill(&self) {
        if self.kill_file
            && let Ok(mut f) = OpenOptions::new().write(true).open(self.dir.join("cgroup.kill"))
        {
            let _ = f.write_all(b"1");
            return;
        }
        self.signal(Signal::SIGKILL);
    }

    /// CPU time used by every process of this run, in microseconds.
    pub fn cpu_usec(&self) -> Option<u64> {
        self.cpu_total().map(|t| t.saturating_sub(self.cpu_base))
    }

    fn cpu_total(&self) -> Option<u64> {
        let text = read_small(&self.dir.join("cpu.stat")).ok()?;
        text.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
    }

    /// Peak memory of this run (`memory.peak` of its own cgroup), where the
    /// memory controller is enabled.
    pub fn memory_peak(&self) -> Option<u64> {
        if !self.per_run {
            return None;
        }
        read_small(&self.dir.join("memory.peak")).ok()?.trim().parse().ok()
    }

    /// The cgroup's folder name (`<kind>.<job>` or `<kind>.<job>.<nonce>`).
    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// A small cgroup file in one read (a cgroup file has no size to ask for,
/// and `read_to_string` would ask, then read it in pieces from 32 bytes up).
/// A cgroup file is made whole by the kernel as it is read: a read that
/// leaves room in the buffer had all of it, and no second read (for the end)
/// is needed.
fn read_small(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut file = File::open(path)?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..])? {
            0 => break,
            n if len + n < buf.len() => {
                len += n;
                break;
            }
            n => len += n,
        }
    }
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// A run's own cgroup is removed when it is let go (best effort: one still
/// populated stays, and the next start of the daemon ends it); a job's
/// reused one stays for its next run.
impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.procs = None;
        if !self.per_run {
            return;
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::debug!(cgroup = %self.dir.display(), error = %e, "cannot remove a run cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_cgroup_files() {
        let limits = Limits { memory_max: Some(64 << 20), cpu_max: Some(0.5), tasks_max: Some(32) };
        let files: Vec<(&str, String)> = limits.entries().into_iter().map(|(_, _, f, v)| (f, v)).collect();
        assert_eq!(
            files,
            [
                ("memory.max", "67108864".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "32".to_string())
            ]
        );
    }

    #[test]
    fn without_cgroups_a_limit_is_an_error_not_ignored() {
        let c = Containment::ProcessGroups { why: "test".into() };
        assert!(c.new_run("x", "1", &Limits::default(), false).unwrap().is_none());
        let err =
            c.new_run("x", "1", &Limits { tasks_max: Some(3), ..Default::default() }, false).unwrap_err().to_string();
        assert!(err.contains("tasks_max needs a cgroup"), "{err}");
    }
}
