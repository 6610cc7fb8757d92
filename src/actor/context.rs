//! What every job actor knows about this daemon: its instance, how runs are
//! contained and marked, how daemons coordinate, and the metrics.

use crate::coordination::Coordinator;
use crate::key::JobKey;

/// What every job actor needs to know about this daemon.
#[derive(Debug)]
pub struct Shared {
    pub instance: std::sync::Arc<str>,
    /// Prefix of every run marker this daemon hands out (see [`crate::process::MARKER_VAR`]).
    pub marker_prefix: String,
    pub coordinator: Coordinator,
    /// How runs are contained (a cgroup each, or process groups).
    pub containment: crate::cgroup::Containment,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The wall clock schedules are armed on (one timerfd for every job).
    pub clock: crate::clock::Clock,
    /// Bumped on every status change of any job (the API's cache key and ETag).
    pub generation: std::sync::atomic::AtomicU64,
    /// `max_concurrent_runs`: one permit per active triggered run (none = no limit).
    pub run_permits: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// The watcher of every job's inbox (file-arrival triggers).
    pub inboxes: crate::inbox::Inboxes,
    /// What happens to jobs and runs, for whoever listens.
    pub events: crate::events::Bus,
    /// Notifications on their way.
    pub outbox: std::sync::Arc<crate::outbox::Outbox>,
    /// Triggered jobs that got a request in their queue from another job
    /// (`then`): their actor reads the queue again.
    pub chained: tokio::sync::mpsc::UnboundedSender<String>,
    /// Where the blocking part of each start is done.
    pub starts: super::starts::Starts,
}

impl Shared {
    /// Notes that some job's published status changed.
    pub fn changed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The cgroup of a new run of `key` (`nonce` tells runs apart), with the
    /// job's limits; `None` when runs are contained by process groups.
    pub fn run_cgroup(
        &self,
        key: &JobKey,
        nonce: &str,
        limits: &crate::cgroup::Limits,
        own: bool,
    ) -> std::io::Result<Option<crate::cgroup::RunCgroup>> {
        self.containment.new_run(&format!("{}.{}", key.kind.as_str(), key.name), nonce, limits, own)
    }

    /// SIGKILLs every process of every job of this daemon, at once (a second
    /// stop signal): every run cgroup, every process carrying one of our
    /// markers, every run's process group.
    pub fn kill_everything(&self) {
        use nix::sys::signal::Signal::SIGKILL;
        if let crate::cgroup::Containment::Cgroup(root) = &self.containment {
            root.kill_all();
        }
        let marked: Vec<_> = crate::process::find_marked(&self.marker_prefix).into_iter().map(|(pid, _)| pid).collect();
        crate::process::signal_all(&marked, SIGKILL);
        for leader in crate::spawn::leaders() {
            crate::process::signal_group(leader, SIGKILL);
        }
    }

    /// The marker of one run of `key`.
    pub fn marker(&self, key: &JobKey, nonce: &str) -> String {
        format!("{}{}/{}/{nonce}", self.marker_prefix, key.kind.as_str(), key.name)
    }
}
