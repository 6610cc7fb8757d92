//! The actor that owns one continuous job on this daemon: it starts the
//! process, keeps it alive with exponential backoff, stops it by the protocol,
//! restarts it on new files, and reports every step in the job's log and
//! status file.
//!
//! ```text
//!   Update / Shutdown ──► [ wanted? ] ──stopped──► Stopped / Invalid (wait)
//!                             │ running
//!                     singleton lock? ──no──► InactiveInstance (retry)
//!                             │ yes
//!                  Starting ─► Running ──exit──► PendingRestart ─(backoff)─┐
//!                             ▲                                            │
//!                             └────────────────────────────────────────────┘
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::actor::Shared;
use crate::actor::definition::Definition;
use crate::actor::launch::Launch;
use crate::config::Config;
use crate::coordination::Lease;
use crate::jobs::{JobDef, Runnable};
use crate::key::JobKey;
use crate::logs::{Level, LogFile, Rotation, format_time};
use crate::run::{Run, human};
use crate::status::{self, ContinuousStatus, JobStatus};

/// The `reason` of a job stopped by its `disable.job`.
pub const DISABLED_REASON: &str = "disable.job is present";

/// A process that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(120);

/// Messages from the supervisor.
#[derive(Debug)]
pub enum Control {
    /// The job folder or the daemon configuration changed (or may have).
    Update { def: Arc<JobDef>, config: Arc<Config> },
    /// Stop the process (if any) and end the actor. `why` goes into the log.
    Shutdown { why: &'static str },
    /// Answered once every message before it has been taken in.
    Sync(tokio::sync::oneshot::Sender<()>),
    /// Stop the process by the stop protocol and start it again at once
    /// (`webjobs restart`). Answered with why not when the job is not running.
    Restart(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The supervisor's handle on a continuous job's actor.
pub type Handle = crate::actor::Handle<Control, ContinuousStatus>;

/// Starts the actor for a continuous job.
pub fn spawn(
    def: Arc<JobDef>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> (Handle, tokio::task::Id) {
    let (handle, inbox) = crate::actor::channels(ContinuousStatus::new(&shared.instance));
    let task = tasks.spawn(async move { Actor::new(def, config, shared, inbox).run().await });
    (handle, task.id())
}

/// What the actor should be doing now.
enum Wanted {
    Stopped(String),
    Invalid(String),
    Running(Arc<Runnable>),
}

/// What a control message asks of a running (or waiting) job.
enum Next {
    Continue,
    Restart(&'static str),
    Stop(String),
    Exit(&'static str),
}

struct Actor {
    key: JobKey,
    shared: Arc<Shared>,
    config: Arc<Config>,
    definition: Definition,
    data_dir: PathBuf,
    /// The status file, kept open.
    status_file: status::Record,
    /// The status last told to listeners ([`crate::events`]).
    published: Option<JobStatus>,
    /// When the recent restarts were, and whether a crash loop was told.
    restarts_at: std::collections::VecDeque<tokio::time::Instant>,
    looping: bool,
    log: LogFile,
    status: ContinuousStatus,
    rx: crate::actor::Mailbox<Control>,
    status_tx: crate::actor::Publisher<ContinuousStatus>,
    backoff_step: u32,
    lease: Option<Lease>,
    exiting: bool,
    /// The data folder exists (made before the first start).
    data_ready: bool,
}

impl Actor {
    fn new(
        def: Arc<JobDef>,
        config: Arc<Config>,
        shared: Arc<Shared>,
        inbox: crate::actor::Inbox<Control, ContinuousStatus>,
    ) -> Actor {
        let key = def.key.clone();
        let data_dir = config.job_data_dir(&key);
        let rotation = Rotation { max_size: config.log.max_size, keep: config.log.keep };
        // Created at the first line: nothing on disk stands between discovery and the first start.
        let log = LogFile::lazy(&data_dir.join(crate::layout::JOB_LOG), shared.instance.clone(), Some(rotation));
        let mut actor = Actor {
            status: ContinuousStatus::new(&shared.instance),
            key,
            shared,
            config,
            definition: Definition::new(def),
            data_dir,
            status_file: status::Record::default(),
            published: None,
            restarts_at: Default::default(),
            looping: false,
            log,
            rx: inbox.rx,
            status_tx: inbox.state,
            backoff_step: 0,
            lease: None,
            exiting: false,
            data_ready: false,
        };
        actor.report_problems();
        actor
    }

    async fn run(mut self) {
        while !self.exiting {
            match self.wanted() {
                Wanted::Stopped(reason) => self.idle(JobStatus::Stopped, Some(reason), None).await,
                Wanted::Invalid(error) => self.idle(JobStatus::Invalid, None, Some(error)).await,
                Wanted::Running(job) => self.cycle(job).await,
            }
        }
        self.lease = None;
        let reason = self.status.reason.take().or(Some("daemon stopped".into()));
        self.set_status(JobStatus::Stopped, |s| s.reason = reason);
    }

    fn wanted(&self) -> Wanted {
        if self.config.switches.stopped {
            return Wanted::Stopped("WEBJOBS_STOPPED is set".into());
        }
        if self.definition.def.disabled {
            return Wanted::Stopped(DISABLED_REASON.into());
        }
        match &self.definition.good {
            Some(job) => Wanted::Running(job.clone()),
            None => Wanted::Invalid(self.definition.def.errors().join("; ")),
        }
    }

    /// Stays stopped (or invalid) until a control message changes that.
    async fn idle(&mut self, status: JobStatus, reason: Option<String>, error: Option<String>) {
        self.lease = None;
        if self.status.status != status || self.status.reason != reason {
            if let Some(reason) = &reason {
                self.log.sys(Level::SysInfo, &format!("stopped: {reason}"));
            }
            self.set_status(status, |s| {
                s.reason = reason;
                s.error = error;
                s.pid = None;
                s.next_restart = None;
            });
        }
        let _ = self.wait_control(None).await;
    }

    /// Waits for a control message (or `timeout`) and applies it.
    async fn wait_control(&mut self, timeout: Option<Duration>) -> Next {
        let message = match timeout {
            Some(t) => match tokio::time::timeout(t, self.rx.recv()).await {
                Ok(m) => m,
                Err(_) => return Next::Continue,
            },
            None => self.rx.recv().await,
        };
        match message {
            Some(control) => self.apply(control),
            None => self.apply(Control::Shutdown { why: "daemon stopping" }),
        }
    }

    /// Takes in a control message and says what it means for a running process.
    fn apply(&mut self, control: Control) -> Next {
        match control {
            Control::Sync(done) => {
                let _ = done.send(());
                Next::Continue
            }
            Control::Shutdown { why } => {
                self.exiting = true;
                Next::Exit(why)
            }
            Control::Restart(reply) => match self.wanted() {
                Wanted::Running(_) => {
                    let _ = reply.send(Ok(()));
                    self.backoff_step = 0;
                    Next::Restart("restart asked")
                }
                Wanted::Stopped(reason) => {
                    let _ = reply.send(Err(format!("it is stopped ({reason}); use start")));
                    Next::Continue
                }
                Wanted::Invalid(error) => {
                    let _ = reply.send(Err(format!("it cannot run: {error}")));
                    Next::Continue
                }
            },
            Control::Update { def, config } => {
                let before = self.definition.good.clone();
                self.config = config;
                let invalid = self.definition.update(def);
                self.report_problems();
                if let Some(errors) = invalid {
                    self.tell(self.definition.invalid_event(errors));
                }
                self.persist();
                match self.wanted() {
                    Wanted::Stopped(reason) => Next::Stop(reason),
                    Wanted::Invalid(error) => Next::Stop(error),
                    Wanted::Running(job) if before.as_ref() != Some(&job) => {
                        self.backoff_step = 0;
                        Next::Restart("job files or settings changed")
                    }
                    Wanted::Running(_) => Next::Continue,
                }
            }
        }
    }

    /// One start, run and (when it ends by itself) backoff.
    async fn cycle(&mut self, job: Arc<Runnable>) {
        if !self.singleton_gate(&job).await {
            return;
        }
        let mut run = match self.start(&job).await {
            Ok(run) => run,
            Err(e) => {
                self.log.sys(Level::SysError, &format!("failed to start: {e}"));
                self.status.last_exit = Some(format!("failed to start: {e}"));
                // In the status and the API's `error` too, not only in the log.
                self.status.error = Some(format!("failed to start: {e}"));
                return self.backoff(&job, Duration::ZERO).await;
            }
        };
        let grace = job.settings.stopping_wait_time;
        let recovered_after = job.settings.crash_loop.recovered_after;
        let stable_at = tokio::time::Instant::now() + recovered_after;
        // Set once we stop the run ourselves: the status it ends in.
        let mut then: Option<JobStatus> = None;
        let lease = self.lease.take();
        let mut lost = false;
        // Made once: a lock file is checked every second from the start.
        let mut lease_lost = Box::pin(crate::coordination::lost(lease.as_ref().map(Lease::watch_lost)));
        loop {
            tokio::select! {
                () = run.over(&mut self.log) => break,
                () = &mut lease_lost, if !lost => {
                    lost = true;
                    if then.is_some() {
                        continue;
                    }
                    let why = lease.as_ref().map(Lease::why_lost).unwrap_or_default();
                    self.log.sys(Level::SysError, &format!("singleton lease lost: {why}; stopping the process so that another instance may take over"));
                    self.set_status(JobStatus::Stopping, |_| {});
                    run.begin_stop(&mut self.log, grace, "singleton lease lost");
                    then = Some(JobStatus::Starting);
                    // Released only once the process is gone (dropped below).
                }
                () = tokio::time::sleep_until(stable_at), if self.looping && then.is_none() => {
                    self.recovered(recovered_after);
                }
                control = self.rx.recv(), if !self.exiting => {
                    let control = control.unwrap_or(Control::Shutdown { why: "daemon stopping" });
                    let (why, status) = match self.apply(control) {
                        Next::Continue => continue,
                        Next::Restart(why) => (why.to_string(), JobStatus::Starting),
                        Next::Stop(why) => (why, JobStatus::Stopped),
                        Next::Exit(why) => (why.to_string(), JobStatus::Stopped),
                    };
                    if then.is_some() && self.exiting {
                        // A shutdown while a stop is under way does not wait out its grace.
                        run.kill_now(&mut self.log, "the daemon is stopping");
                    } else if then.is_none() {
                        self.set_status(JobStatus::Stopping, |_| {});
                        run.begin_stop(&mut self.log, grace, &why);
                    }
                    // The newest wish wins (a restart asked during a stop for good stays a stop).
                    then = Some(if then == Some(JobStatus::Stopped) { JobStatus::Stopped } else { status });
                }
            }
        }
        // A lost lease is not kept: the next start takes it again, if it can.
        self.lease = if lost { None } else { lease };
        match then {
            Some(then) => self.stopped(&mut run, then),
            None => self.exited(&mut run, &job).await,
        }
    }

    /// The process ended by itself: say how, then wait out the restart delay.
    async fn exited(&mut self, run: &mut Run, job: &Runnable) {
        let exit = run.describe_exit();
        let usage = run.finish_usage();
        let cpu = usage.cpu_ms.map(|ms| format!(", CPU {}", human(Duration::from_millis(ms)))).unwrap_or_default();
        let clean = run.exit_status().and_then(|s| s.code()) == Some(0);
        self.log.sys(
            if clean { Level::SysInfo } else { Level::SysError },
            &format!("process {} ended with {exit} after {}{cpu}", run.pid, human_uptime(run.uptime())),
        );
        self.shared.metrics.cpu_used("continuous", &self.key.name, usage.cpu_ms);
        self.status.last_exit = Some(exit);
        self.shared.metrics.output("continuous", &self.key.name, run.output.bytes);
        self.shared.metrics.restarted(&self.key.name);
        self.backoff(job, run.uptime()).await;
    }

    /// We stopped the process; the job goes on in status `then`.
    fn stopped(&mut self, run: &mut Run, then: JobStatus) {
        let usage = run.finish_usage();
        self.shared.metrics.cpu_used("continuous", &self.key.name, usage.cpu_ms);
        let exit = run.describe_exit();
        self.shared.metrics.output("continuous", &self.key.name, run.output.bytes);
        self.log.sys(Level::SysInfo, &format!("process {} stopped ({exit})", run.pid));
        self.status.last_exit = Some(exit);
        self.set_status(then, |s| s.pid = None);
    }

    /// Spawns the process after preparing its working copy.
    async fn start(&mut self, job: &Arc<Runnable>) -> std::io::Result<Run> {
        // The job may write into WEBJOBS_DATA_PATH from its first instruction.
        if !self.data_ready {
            std::fs::create_dir_all(&self.data_dir)?;
            self.data_ready = true;
        }
        let nonce =
            format!("{:x}", crate::hash::fnv1a(format!("{:?}{}", SystemTime::now(), std::process::id()).as_bytes()));
        let port = crate::run::free_port();
        let run = Launch {
            job,
            config: &self.config,
            shared: &self.shared,
            nonce: &nonce,
            run_id: "",
            arguments: &[],
            arguments_text: "",
            port,
            // A singleton's lock goes with the run: held while any process of
            // it lives, even if this daemon is killed, so no other daemon
            // starts a second copy beside an orphaned one.
            inherit: self.lease.as_ref().and_then(Lease::fd),
            env: crate::actor::launch::fence_env(self.lease.as_ref()),
            stdin: None,
        }
        .start()
        .await?;
        // Other jobs starting at the same moment spawn before this one writes its files.
        tokio::task::yield_now().await;
        self.log.sys(
            Level::SysInfo,
            &format!("started process {} (restart {}): {}", run.pid, self.status.restarts, run.command_line),
        );
        let pid = run.pid.as_raw();
        self.set_status(JobStatus::Running, |s| {
            s.error = s.error.take().filter(|e| !e.starts_with("failed to start: "));
            s.pid = Some(pid);
            s.port = port;
            s.next_restart = None;
            s.start_time = Some(format_time(SystemTime::now()));
        });
        Ok(run)
    }

    /// Waits out the restart delay (PendingRestart); control messages may cut it short.
    async fn backoff(&mut self, job: &Runnable, uptime: Duration) {
        if uptime >= STABLE_AFTER {
            self.backoff_step = 0;
        }
        let delay = restart_delay(job, &self.config, self.backoff_step);
        self.backoff_step = self.backoff_step.saturating_add(1);
        self.count_restart(job.settings.crash_loop);
        let due = SystemTime::now() + delay;
        self.log.sys(Level::SysInfo, &format!("restarting in {}", human(delay)));
        self.set_status(JobStatus::PendingRestart, |s| {
            s.pid = None;
            s.next_restart = Some(format_time(due));
            s.restarts += 1;
        });
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.wait_control(Some(left)).await {
                Next::Continue => {}
                Next::Restart(_) | Next::Stop(_) | Next::Exit(_) => return,
            }
        }
    }

    /// Notes a restart; enough of them within the window is a crash loop, told once.
    fn count_restart(&mut self, crash_loop: crate::settings::CrashLoop) {
        let now = tokio::time::Instant::now();
        self.restarts_at.push_back(now);
        while self.restarts_at.front().is_some_and(|at| now.duration_since(*at) > crash_loop.within) {
            self.restarts_at.pop_front();
        }
        while self.restarts_at.len() > crash_loop.restarts as usize {
            self.restarts_at.pop_front();
        }
        if !self.looping && self.restarts_at.len() >= crash_loop.restarts as usize {
            self.looping = true;
            let text = format!("crash loop: {} restarts within {}", self.restarts_at.len(), human(crash_loop.within));
            self.log.sys(Level::SysError, &text);
            let detail =
                serde_json::json!({"restarts": self.restarts_at.len(), "within_seconds": crash_loop.within.as_secs()});
            let event = crate::events::Event::about(&self.key, "job.crash_loop").status("CrashLoop").detail(detail);
            self.tell(event);
        }
    }

    /// A process ran long enough after a crash loop: the job has recovered.
    fn recovered(&mut self, after: Duration) {
        self.looping = false;
        self.restarts_at.clear();
        self.log.sys(Level::SysInfo, &format!("recovered: the process has run for {}", human(after)));
        let event = crate::events::Event::about(&self.key, "job.recovered").status("Running");
        self.tell(event.detail(serde_json::json!({"ran_seconds": after.as_secs()})));
    }

    /// Takes (or keeps) the singleton lock when the job asks for one.
    /// Returns false (after waiting a while) when another instance holds it.
    async fn singleton_gate(&mut self, job: &Runnable) -> bool {
        if !job.settings.is_singleton {
            self.lease = None;
            return true;
        }
        if self.lease.is_some() {
            return true;
        }
        let grace = job.settings.stopping_wait_time + Duration::from_secs(1);
        match self.shared.coordinator.try_singleton(&self.key, &self.shared.instance, grace).await {
            Ok(Some(lease)) => {
                self.status.error =
                    self.status.error.take().filter(|e| !e.starts_with("cannot use the singleton lock"));
                let fence = lease.fence().map(|f| format!(" (fence {f})")).unwrap_or_default();
                self.lease = Some(lease);
                self.log.sys(Level::SysInfo, &format!("singleton lock acquired{fence}; this instance runs the job"));
                return true;
            }
            Ok(None) => {
                if self.status.status != JobStatus::InactiveInstance {
                    let holder = self.shared.coordinator.singleton_holder(&self.key).await.unwrap_or_default();
                    self.log.sys(
                        Level::SysInfo,
                        &format!("is_singleton: the job runs on another instance ({holder}); waiting to take over"),
                    );
                    self.set_status(JobStatus::InactiveInstance, |s| s.pid = None);
                }
            }
            Err(e) => {
                // Not running here, whatever the lock's trouble is: stand by.
                let text = format!("cannot use the singleton lock: {e}");
                if self.status.error.as_deref() != Some(text.as_str()) {
                    self.log.sys(Level::SysError, &text);
                }
                self.set_status(JobStatus::InactiveInstance, |s| {
                    s.pid = None;
                    s.error = Some(text);
                });
            }
        }
        // Lock files are tried again after `singleton_retry`; a database
        // says when the lease may be free (its beats), at the latest then.
        let retry = self.config.singleton_retry;
        let shared = self.shared.clone();
        let max = if matches!(shared.coordinator, crate::coordination::Coordinator::Files(_)) {
            retry
        } else {
            retry.max(Duration::from_secs(30))
        };
        let key = self.key.clone();
        tokio::select! {
            _ = self.wait_control(Some(max)) => {}
            () = shared.coordinator.singleton_free(&key, max) => {}
        }
        false
    }

    /// Writes new errors and warnings to the job log (once each) and the status.
    fn report_problems(&mut self) {
        self.definition.report(&mut self.log);
        self.status.error = self.definition.error_text();
        self.status.warnings = self.definition.def.warnings();
    }

    fn set_status(&mut self, status: JobStatus, change: impl FnOnce(&mut ContinuousStatus)) {
        self.status.status = status;
        change(&mut self.status);
        if status != JobStatus::Stopped {
            self.status.reason = None;
        }
        self.persist();
    }

    /// Publishes `event` and notifies who wants it (see [`crate::actor::tell`]).
    fn tell(&mut self, event: crate::events::Event) {
        let own = self.definition.notify_rules();
        crate::actor::tell(&self.shared, &own, &self.config.notify, event, None, &mut self.log);
    }

    /// The status file first, then the listeners: whoever is told of a
    /// change (an API answer, an event) finds it on disk too.
    fn persist(&mut self) {
        self.status.updated = format_time(SystemTime::now());
        match status::write(&self.data_dir, &self.status, &mut self.status_file) {
            Ok(()) => crate::repeats::clear("status file", &self.key),
            Err(e) => crate::repeats::report("status file", &self.key, |held| {
                tracing::error!(job = %self.key, error = %e, "cannot write the status file{}", crate::repeats::held_note(held));
            }),
        }
        self.status_tx.send_replace(self.status.clone());
        self.shared.changed();
        if self.published != Some(self.status.status) {
            self.published = Some(self.status.status);
            let event = crate::events::Event::about(&self.key, "job.status").status(self.status.status.as_str());
            self.tell(event.detail(&self.status));
        }
    }
}

/// `restart_delay × 2^step`, capped by `max_restart_delay` and `WEBJOBS_RESTART_TIME`.
pub fn restart_delay(job: &Runnable, config: &Config, step: u32) -> Duration {
    let cap = match config.switches.restart_time {
        Some(global) => job.settings.max_restart_delay.min(global),
        None => job.settings.max_restart_delay,
    };
    let factor = 2u32.saturating_pow(step.min(30));
    job.settings.restart_delay.saturating_mul(factor).min(cap)
}

fn human_uptime(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Runnable {
        Runnable::example(std::path::Path::new("/x"), 0)
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_the_cap() {
        let config = Config::load_with_env(&Default::default(), &|_| None).unwrap();
        let delays: Vec<u64> = (0..10).map(|s| restart_delay(&job(), &config, s).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
    }

    #[test]
    fn webjobs_restart_time_caps_globally() {
        let mut config = Config::load_with_env(&Default::default(), &|_| None).unwrap();
        config.switches.restart_time = Some(Duration::from_secs(3));
        assert_eq!(restart_delay(&job(), &config, 9), Duration::from_secs(3));
    }
}
