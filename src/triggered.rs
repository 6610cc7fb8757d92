//! The actor that owns one triggered job on this daemon: on-demand runs,
//! schedule ticks, overlap policy, retries, timeouts and cancellation. Each
//! run gets a folder with its `status` and `output_log.txt` (see [`history`]).
//!
//! ```text
//!  request (API, CLI, queue, retry) · schedule tick (claimed once across daemons)
//!        │
//!  [a run active here?] ─yes─► overlap: skip → refused (409; SYS WARN for a tick)
//!        │ no                           queue → starts when the active run is over
//!        │                              replace → the active run stops; this one starts when it is over
//!  run lock (one active run across daemons) ─held elsewhere─► queued, tried again in 1 s
//!        │
//!  Running ─exits─────────────────────────────────────► Success · Failed ─retries left─► retry after retry_delay
//!     │ cancel · timeout · idle · shutdown
//!     └─► stopping (every request still answered) ─────► Cancelled · Failed · Aborted
//! ```

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{Wake, WallTimer};

use crate::actor::Shared;
use crate::actor::definition::Definition;
use crate::actor::launch::Launch;
use crate::config::Config;
use crate::coordination::{JobCoordination, Lease};
use crate::history::{self, RunState, RunStatus};
use crate::jobs::{JobDef, Runnable};
use crate::key::JobKey;
use crate::logs::{Level, LogFile, Rotation, format_time};
use crate::run::{Run, human};
use crate::settings::{CatchUp, Overlap, RunMode};

/// A tick handled later than this counts as missed (downtime, clock step, suspend).
const LATE: Duration = Duration::from_secs(2);

/// Messages from the supervisor (and, through it, from the API).
#[derive(Debug)]
pub enum Control {
    Update {
        def: Arc<JobDef>,
        config: Arc<Config>,
    },
    Run {
        request: RunRequest,
        reply: RunReply,
    },
    /// Cancels the active run (`run` = its id, or any).
    Cancel {
        run: Option<String>,
        reply: oneshot::Sender<Result<String, Refused>>,
    },
    /// Answers once run `run` has ended (at once if it is not active here).
    Wait {
        run: String,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        why: &'static str,
    },
    /// Answered once every message before it has been taken in.
    Sync(oneshot::Sender<()>),
}

/// Where the answer to a run request goes.
pub type RunReply = oneshot::Sender<Result<Accepted, Refused>>;

/// A request for a run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The script's argv after its own.
    pub arguments: Vec<String>,
    /// The arguments as one string, for `WEBJOBS_COMMAND_ARGUMENTS`: Kudu's
    /// `?arguments=` as given, or [`crate::arguments::join`] of exact words.
    pub text: String,
    /// `External - <who>`, `Schedule - <expr>`, `Retry …`.
    pub trigger: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Started(String),
    /// `overlap: queue`: it starts when the active run ends.
    Queued,
}

/// Why a run (or a cancel) was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("Cannot start a new run since job is already running ({0}).")]
    Running(String),
    #[error("WebJobs are currently in \"stopped\" state (WEBJOBS_STOPPED).")]
    Stopped,
    #[error(
        "the job is stopped (disable.job is present): its schedule is paused and runs are refused; start it with `webjobs start {0}` or POST /api/triggeredwebjobs/{0}/start"
    )]
    Disabled(String),
    #[error("the job cannot run: {0}")]
    Invalid(String),
    #[error("there is no active run{0} of this job on this daemon")]
    NoActiveRun(String),
    #[error("{0}")]
    Failed(String),
}

/// What the actor publishes about its job (for the API, without file reads).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The newest run this daemon knows of: its id and status.
    pub latest: Option<(String, RunStatus)>,
    pub next_tick: Option<Timestamp>,
    /// `disable.job` is present: no schedule, no runs.
    pub disabled: bool,
    /// Why the job's actor could not run (it is started again later).
    pub failure: Option<String>,
}

/// The supervisor's handle on a triggered job's actor.
pub type Handle = crate::actor::Handle<Control, Summary>;

pub fn spawn(
    def: Arc<JobDef>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> (Handle, tokio::task::Id) {
    let (handle, inbox) = crate::actor::channels(Summary::default());
    let task = tasks.spawn(async move {
        let summary = inbox.state.clone();
        match Actor::new(def, config, shared, inbox).await {
            Ok(actor) => actor.run().await,
            // The supervisor reads the reason, shows it and tries again later.
            Err(why) => summary.send_modify(|s| s.failure = Some(why)),
        }
    });
    (handle, task.id())
}

/// Answers a control sent to a job whose actor could not start (`why`).
pub fn refuse(control: Control, why: &str) {
    match control {
        Control::Run { reply, .. } => {
            let _ = reply.send(Err(Refused::Invalid(why.to_string())));
        }
        Control::Cancel { run, reply } => {
            let _ = reply.send(Err(Refused::NoActiveRun(run.map(|r| format!(" {r}")).unwrap_or_default())));
        }
        Control::Wait { reply, .. } => {
            let _ = reply.send(());
        }
        Control::Sync(done) => {
            let _ = done.send(());
        }
        Control::Update { .. } | Control::Shutdown { .. } => {}
    }
}

/// Why an active run is being ended by us.
#[derive(Debug, Clone)]
enum End {
    Cancelled,
    Replaced,
    Timeout(Duration),
    Idle(Duration),
    Shutdown(&'static str),
}

struct Active {
    id: String,
    dir: PathBuf,
    run: Run,
    log: LogFile,
    status: RunStatus,
    _lease: Lease,
    request: RunRequest,
    attempt: u32,
    deadline: Option<tokio::time::Instant>,
    idle: Duration,
    last_bytes: u64,
    last_cpu: u64,
    last_activity: Instant,
    /// Set when we are ending the run: the state it ends in and why.
    ending: Option<(RunState, String)>,
    /// Cancel requests, answered once the run is over.
    cancels: Vec<oneshot::Sender<Result<String, Refused>>>,
}

struct Actor {
    key: JobKey,
    shared: Arc<Shared>,
    config: Arc<Config>,
    definition: Definition,
    data_dir: PathBuf,
    rx: mpsc::UnboundedReceiver<Control>,
    summary: watch::Sender<Summary>,
    /// Armed at `next_tick`.
    timer: WallTimer,
    scheduler_log: LogFile,
    locks: JobCoordination,
    last_run_id: Option<String>,
    active: Option<Active>,
    /// Requests waiting to start, with their attempt number (0 = first run).
    queue: VecDeque<(RunRequest, u32)>,
    next_tick: Option<Timestamp>,
    /// When to try starting the head of `queue` (a retry's delay, or a lock held elsewhere).
    later: Option<tokio::time::Instant>,
    waiters: Vec<(String, oneshot::Sender<()>)>,
    /// `overlap: replace`: the request that starts once the active run is
    /// over, and who waits for its answer.
    replacement: Option<(RunRequest, Option<RunReply>)>,
    exiting: bool,
}

impl Actor {
    async fn new(
        def: Arc<JobDef>,
        config: Arc<Config>,
        shared: Arc<Shared>,
        inbox: crate::actor::Inbox<Control, Summary>,
    ) -> Result<Actor, String> {
        let key = def.key.clone();
        let data_dir = config.job_data_dir(&key);
        let rotation = Some(Rotation { max_size: 1024 * 1024, keep: 1 });
        let log_path = data_dir.join(crate::layout::SCHEDULER_LOG);
        let scheduler_log = LogFile::open(&log_path, &shared.instance, rotation)
            .map_err(|e| format!("cannot open the scheduler log {}: {e}", log_path.display()))?;
        let locks =
            shared.coordinator.job(&key).await.map_err(|e| format!("cannot use the job's coordination files: {e}"))?;
        let timer = WallTimer::new().map_err(|e| format!("cannot create the schedule timer: {e}"))?;
        Ok(Actor {
            key,
            timer,
            locks,
            last_run_id: None,
            shared,
            config,
            definition: Definition::new(def),
            data_dir,
            rx: inbox.rx,
            summary: inbox.state,
            scheduler_log,
            active: None,
            queue: VecDeque::new(),
            next_tick: None,
            later: None,
            waiters: Vec::new(),
            replacement: None,
            exiting: false,
        })
    }

    async fn run(mut self) {
        self.mark_lost_runs().await;
        let latest = history::run_ids(&self.data_dir)
            .into_iter()
            .next()
            .and_then(|id| history::read_status(&self.data_dir.join(&id)).map(|s| (id, s)));
        self.publish_run(latest);
        let disabled = self.def().disabled;
        self.summary.send_modify(|s| s.disabled = disabled);
        self.definition.report(&mut self.scheduler_log);
        self.arm_schedule(true).await;
        while !(self.exiting && self.active.is_none()) {
            self.step().await;
        }
        for (_, waiter) in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Waits for the next event and handles it.
    async fn step(&mut self) {
        let later = self.later;
        let check_at = self.active.as_ref().filter(|a| a.ending.is_none()).map(next_check);
        let active = &mut self.active;
        tokio::select! {
            control = self.rx.recv() => {
                let control = control.unwrap_or(Control::Shutdown { why: "daemon stopping" });
                self.on_control(control).await;
            }
            () = run_over(active) => self.on_over().await,
            wake = self.timer.wait() => match wake {
                Wake::Due => self.on_tick().await,
                Wake::ClockChanged => self.on_clock_set(),
            },
            () = sleep_until(later) => self.on_later().await,
            () = sleep_until(check_at) => self.on_check().await,
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Update { def, config } => self.on_update(def, config).await,
            Control::Sync(done) => {
                let _ = done.send(());
            }
            Control::Run { request, reply } => {
                self.request_run(request, false, Some(reply)).await;
            }
            Control::Cancel { run, reply } => self.cancel(run, reply),
            Control::Wait { run, reply } => {
                if self.active.as_ref().is_some_and(|a| a.id == run) {
                    self.waiters.push((run, reply));
                } else {
                    let _ = reply.send(());
                }
            }
            Control::Shutdown { why } => {
                self.exiting = true;
                self.queue.clear();
                self.later = None;
                self.set_next_tick(None);
                if let Some((_, Some(reply))) = self.replacement.take() {
                    let _ = reply.send(Err(Refused::Failed(format!("the daemon is stopping ({why})"))));
                }
                self.end_active(End::Shutdown(why));
            }
        }
    }

    fn def(&self) -> &JobDef {
        &self.definition.def
    }

    async fn on_update(&mut self, def: Arc<JobDef>, config: Arc<Config>) {
        let before = (
            self.definition.good.clone(),
            self.config.timezone.clone(),
            self.config.switches.clone(),
            self.def().disabled,
        );
        self.config = config;
        self.definition.update(def);
        self.definition.report(&mut self.scheduler_log);
        let disabled = self.def().disabled;
        if disabled != before.3 {
            self.on_disabled_changed();
        }
        if before
            != (self.definition.good.clone(), self.config.timezone.clone(), self.config.switches.clone(), disabled)
        {
            self.arm_schedule(false).await;
        }
    }

    /// `disable.job` appeared or went away: say so; a stop drops queued
    /// requests (an active run ends by itself; `cancel` ends it now).
    fn on_disabled_changed(&mut self) {
        let disabled = self.def().disabled;
        self.summary.send_modify(|s| s.disabled = disabled);
        self.shared.changed();
        let text = if disabled {
            let dropped = std::mem::take(&mut self.queue).len();
            self.later = None;
            format!(
                "stopped (disable.job is present): schedule paused, runs refused; {dropped} queued request(s) dropped"
            )
        } else {
            "started (disable.job removed): schedule and runs resume".to_string()
        };
        self.scheduler_log.sys(Level::SysInfo, &text);
    }

    /// Starts a run now, or says why not (the overlap policy decides when a
    /// run is active). The answer goes to `reply` (when given) and is
    /// returned; with `overlap: replace` it comes once the active run is over
    /// and the new one started (`None` here).
    async fn request_run(
        &mut self,
        request: RunRequest,
        scheduled: bool,
        reply: Option<RunReply>,
    ) -> Option<Result<Accepted, Refused>> {
        let result = match self.decide(scheduled) {
            Ok(None) => {
                let job = self.definition.good.clone().expect("decide checked it");
                self.start_run(&job, request, 0).await
            }
            Ok(Some(Overlap::Queue)) => {
                self.queue.push_back((request, 0));
                Ok(Accepted::Queued)
            }
            Ok(Some(_)) => {
                // Replace: the active run stops; the new one starts when it is over.
                if let Some((_, Some(older))) = self.replacement.replace((request, reply)) {
                    let _ = older.send(Err(Refused::Running("replaced by a newer request (overlap: replace)".into())));
                }
                self.end_active(End::Replaced);
                return None;
            }
            Err(refused) => Err(refused),
        };
        if let Some(reply) = reply {
            let _ = reply.send(result.clone());
        }
        Some(result)
    }

    /// Whether a request may run: `Ok(None)` now, `Ok(Some(overlap))` when a
    /// run is active and `queue` or `replace` applies, or why not.
    fn decide(&mut self, scheduled: bool) -> Result<Option<Overlap>, Refused> {
        if self.config.switches.stopped {
            return Err(Refused::Stopped);
        }
        if self.def().disabled {
            return Err(Refused::Disabled(self.key.name.clone()));
        }
        let Some(job) = self.definition.good.clone() else {
            return Err(Refused::Invalid(self.def().errors().join("; ")));
        };
        let Some(active) = &mut self.active else { return Ok(None) };
        match job.settings.overlap {
            Overlap::Skip => {
                let why = format!("run {} is still running", active.id);
                if scheduled {
                    let text = format!("schedule tick skipped: {why} (overlap: skip)");
                    active.log.sys(Level::SysWarn, &text);
                    self.scheduler_log.sys(Level::SysWarn, &text);
                }
                Err(Refused::Running(why))
            }
            overlap => Ok(Some(overlap)),
        }
    }

    async fn start_run(&mut self, job: &Arc<Runnable>, request: RunRequest, attempt: u32) -> Result<Accepted, Refused> {
        let lease = match self.locks.try_run(&self.shared.instance).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                let holder = self.locks.run_holder().await.unwrap_or_else(|| "another daemon".into());
                // A run is active on another daemon, which we cannot hear end:
                // queued requests and retries try again in a second.
                if job.settings.overlap == Overlap::Queue || attempt > 0 {
                    self.queue.push_back((request, attempt));
                    self.later.get_or_insert(tokio::time::Instant::now() + Duration::from_secs(1));
                    return Ok(Accepted::Queued);
                }
                return Err(Refused::Running(format!("a run is active on {holder}")));
            }
            Err(e) => return Err(Refused::Failed(format!("cannot take the run lock: {e}"))),
        };
        let started = std::time::SystemTime::now();
        let id = self.next_run_id();
        // The process first: creating files is the slow part, and the child needs none of them.
        let spawned = self.spawn(job, &id, &request).await;
        // Let other jobs due at the same tick spawn before this one writes its files.
        tokio::task::yield_now().await;
        let (dir, mut log) = match self.open_run_files(&id) {
            Ok(files) => files,
            Err(e) => {
                if let Ok(mut run) = spawned {
                    run.discard().await;
                }
                return Err(Refused::Failed(format!("cannot create the run folder or its log: {e}")));
            }
        };
        let args = if request.arguments.is_empty() {
            String::new()
        } else {
            format!(" with arguments {:?}", request.arguments)
        };
        log.line(Level::SysInfo, format!("run {id} triggered by {}{args}", request.trigger).as_bytes(), started);
        let mut status = RunStatus {
            status: RunState::Running,
            start_time: format_time(started),
            end_time: None,
            trigger: request.trigger.clone(),
            exit_code: None,
            signal: None,
            instance: self.shared.instance.clone(),
            pid: None,
            arguments: request.arguments.clone(),
            error: None,
            duration_ms: None,
            cpu_ms: None,
            memory_peak: None,
        };
        match spawned {
            Ok(run) => {
                log.sys(Level::SysInfo, &format!("started process {}: {}", run.pid, run.command_line));
                status.pid = Some(run.pid.as_raw());
                let _ = history::write_status(&dir, &status);
                self.publish_run(Some((id.clone(), status.clone())));
                let idle = job.settings.idle_timeout.unwrap_or(self.config.switches.idle_timeout);
                let deadline = job.settings.timeout.map(|t| tokio::time::Instant::now() + t);
                let active = Active {
                    id: id.clone(),
                    dir,
                    run,
                    log,
                    status,
                    _lease: lease,
                    request,
                    attempt,
                    deadline,
                    idle,
                    last_bytes: 0,
                    last_cpu: 0,
                    last_activity: Instant::now(),
                    ending: None,
                    cancels: Vec::new(),
                };
                self.active = Some(active);
                Ok(Accepted::Started(id))
            }
            Err(e) => {
                log.sys(Level::SysError, &format!("failed to start: {e}"));
                status.status = RunState::Failed;
                status.error = Some(format!("failed to start: {e}"));
                status.end_time = Some(format_time(std::time::SystemTime::now()));
                let _ = history::write_status(&dir, &status);
                self.shared.metrics.run_finished(&self.key.name, "Failed", Duration::ZERO);
                self.publish_run(Some((id.clone(), status.clone())));
                drop(lease);
                self.after_run(&request, attempt, RunState::Failed, &id);
                Ok(Accepted::Started(id))
            }
        }
    }

    /// A run id after every id this actor handed out (ids sort by time).
    fn next_run_id(&mut self) -> String {
        let mut id = history::run_id(Timestamp::now());
        if let Some(last) = &self.last_run_id
            && id <= *last
        {
            id = format!("{:018}", last.parse::<u64>().unwrap_or(0) + 1);
        }
        self.last_run_id = Some(id.clone());
        id
    }

    /// The run's folder, pruned history, and its log.
    fn open_run_files(&self, id: &str) -> std::io::Result<(PathBuf, LogFile)> {
        let dir = history::create_run_dir_named(&self.data_dir, id)?;
        history::prune(&self.data_dir, self.config.switches.history_size as usize, &[id]);
        let log = LogFile::open(&dir.join(crate::layout::OUTPUT_LOG), &self.shared.instance, None)?;
        Ok((dir, log))
    }

    async fn spawn(&mut self, job: &Arc<Runnable>, id: &str, request: &RunRequest) -> std::io::Result<Run> {
        Launch {
            job,
            config: &self.config,
            shared: &self.shared,
            nonce: id,
            run_id: id,
            arguments: &request.arguments,
            arguments_text: &request.text,
            port: None,
            inherit: None,
        }
        .start()
        .await
    }

    /// Nothing of the active run is left: record how it ended (by its exit
    /// code, or as we ended it).
    async fn on_over(&mut self) {
        let Some(mut active) = self.active.take() else { return };
        let (state, error) = match active.ending.take() {
            Some((state, why)) => (state, (state != RunState::Success).then_some(why)),
            None if active.run.exit_status().and_then(|s| s.code()) == Some(0) => (RunState::Success, None),
            None => (RunState::Failed, None),
        };
        let cancels = std::mem::take(&mut active.cancels);
        let id = active.id.clone();
        self.finish(active, state, error);
        for reply in cancels {
            let _ = reply.send(Ok(id.clone()));
        }
        self.start_replacement().await;
    }

    /// Starts the request that replaces the run just ended (`overlap: replace`).
    async fn start_replacement(&mut self) {
        let Some((request, reply)) = self.replacement.take() else { return };
        let result = match (self.exiting, self.definition.good.clone()) {
            (true, _) => Err(Refused::Failed("the daemon is stopping".into())),
            (false, None) => Err(Refused::Invalid(self.def().errors().join("; "))),
            (false, Some(job)) => self.start_run(&job, request, 0).await,
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Begins ending the active run by the stop protocol and notes why; the
    /// run is over (and recorded) when [`Run::over`] says so. A shutdown
    /// while it is already being stopped kills what is left at once.
    fn end_active(&mut self, end: End) {
        let grace = self.grace();
        let Some(active) = self.active.as_mut() else { return };
        if active.ending.is_some() {
            // It ends as it was being ended (a cancel stays a cancel), only sooner.
            if let End::Shutdown(_) = end {
                active.run.kill_now(&mut active.log, "the daemon is stopping");
            }
            return;
        }
        let (state, why) = match &end {
            End::Cancelled => (RunState::Cancelled, "cancelled".to_string()),
            End::Replaced => (RunState::Cancelled, "replaced by a new run (overlap: replace)".to_string()),
            End::Timeout(t) => (RunState::Failed, format!("timeout: the run took longer than {}", human(*t))),
            End::Idle(t) => (
                RunState::Failed,
                format!(
                    "idle_timeout: no output and no CPU time for {}; raise idle_timeout in settings.job (or WEBJOBS_IDLE_TIMEOUT)",
                    human(*t)
                ),
            ),
            End::Shutdown(why) => (RunState::Aborted, format!("the daemon is stopping ({why})")),
        };
        active.run.begin_stop(&mut active.log, grace, &why);
        active.ending = Some((state, why));
    }

    /// Writes the run's end (status, log line), releases the lock, and starts
    /// what follows: a retry or the next queued run.
    fn finish(&mut self, mut active: Active, state: RunState, error: Option<String>) {
        let exit = active.run.exit_status();
        let duration = active.run.started.elapsed();
        let usage = active.run.finish_usage();
        let s = &mut active.status;
        s.cpu_ms = usage.cpu_ms;
        s.memory_peak = usage.memory_peak;
        s.status = state;
        s.end_time = Some(format_time(std::time::SystemTime::now()));
        s.duration_ms = Some(duration.as_millis() as u64);
        s.exit_code = exit.and_then(|e| e.code());
        s.signal =
            exit.and_then(|e| std::os::unix::process::ExitStatusExt::signal(&e)).map(crate::process::signal_name);
        s.pid = None;
        if state == RunState::Failed && error.is_none() {
            s.error = Some(format!("Job failed due to {}", active.run.describe_exit()));
        } else {
            s.error = error;
        }
        let level = if state == RunState::Success { Level::SysInfo } else { Level::SysError };
        let what = active.run.describe_exit();
        active
            .log
            .sys(level, &format!("run {} ended: {} ({what}) after {}", active.id, state.as_str(), human(duration)));
        match history::write_status(&active.dir, &active.status) {
            Ok(()) => crate::repeats::clear("run status", &self.key.to_string()),
            Err(e) => crate::repeats::report("run status", &self.key.to_string(), |held| {
                tracing::error!(job = %self.key, error = %e, "cannot write the run status{}", crate::repeats::held_note(held));
            }),
        }
        self.shared.metrics.run_finished(&self.key.name, state.as_str(), duration);
        self.shared.metrics.cpu_used("triggered", &self.key.name, usage.cpu_ms);
        self.shared.metrics.output("triggered", &self.key.name, active.run.output.bytes);
        self.publish_run(Some((active.id.clone(), active.status.clone())));
        let id = active.id.clone();
        let (request, attempt) = (active.request.clone(), active.attempt);
        drop(active);
        self.after_run(&request, attempt, state, &id);
    }

    fn after_run(&mut self, request: &RunRequest, attempt: u32, state: RunState, id: &str) {
        for (_, waiter) in self.waiters.extract_if(.., |(run, _)| run == id) {
            let _ = waiter.send(());
        }
        if self.exiting {
            return;
        }
        let Some(job) = self.definition.good.clone() else { return };
        if self.def().disabled {
            if state == RunState::Failed && attempt < job.settings.retries {
                self.scheduler_log
                    .sys(Level::SysWarn, &format!("run {id} failed; no retry: the job is stopped (disable.job)"));
            }
            return;
        }
        if state == RunState::Failed && attempt < job.settings.retries {
            let next = attempt + 1;
            let text =
                format!("retry {next}/{} of run {id} in {}", job.settings.retries, human(job.settings.retry_delay));
            self.scheduler_log.sys(Level::SysInfo, &text);
            let trigger = format!("Retry {next}/{} of {id}", job.settings.retries);
            let retry = RunRequest { trigger, ..request.clone() };
            self.queue.push_front((retry, next));
            self.later = Some(tokio::time::Instant::now() + job.settings.retry_delay);
        } else if !self.queue.is_empty() {
            self.later = Some(tokio::time::Instant::now());
        }
    }

    /// Starts the head of the queue (a retry or a queued request), unless a
    /// run is active: its end calls this again.
    async fn on_later(&mut self) {
        self.later = None;
        let Some(job) = self.definition.good.clone() else { return };
        if self.active.is_some() {
            return;
        }
        let Some((request, attempt)) = self.queue.pop_front() else { return };
        if let Err(e) = self.start_run(&job, request, attempt).await {
            self.scheduler_log.sys(Level::SysWarn, &format!("could not start a queued or retried run: {e}"));
        }
    }

    /// Cancels the active run; answered once it is over.
    fn cancel(&mut self, run: Option<String>, reply: oneshot::Sender<Result<String, Refused>>) {
        let matches = self.active.as_ref().is_some_and(|a| run.as_ref().is_none_or(|r| *r == a.id));
        if !matches {
            let _ = reply.send(Err(Refused::NoActiveRun(run.map(|r| format!(" {r}")).unwrap_or_default())));
            return;
        }
        self.end_active(End::Cancelled);
        if let Some(active) = self.active.as_mut() {
            active.cancels.push(reply);
        }
    }

    /// Timeout and idle checks of the active run.
    async fn on_check(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let now = tokio::time::Instant::now();
        if let Some(deadline) = active.deadline
            && now >= deadline
        {
            let limit = self.definition.good.as_ref().and_then(|j| j.settings.timeout).unwrap_or_default();
            return self.end_active(End::Timeout(limit));
        }
        if active.run.output.bytes != active.last_bytes {
            active.last_bytes = active.run.output.bytes;
            active.last_activity = Instant::now();
            return;
        }
        let cpu = active.run.cpu_so_far();
        if cpu != active.last_cpu {
            active.last_cpu = cpu;
            active.last_activity = Instant::now();
            return;
        }
        if active.last_activity.elapsed() >= active.idle {
            let idle = active.idle;
            self.end_active(End::Idle(idle));
        }
    }

    fn grace(&self) -> Duration {
        self.definition.good.as_ref().map(|j| j.settings.stopping_wait_time).unwrap_or(Duration::from_secs(30))
    }

    /// The zone of the job's schedule.
    fn zone(&self) -> TimeZone {
        let name = self
            .definition
            .good
            .as_ref()
            .and_then(|j| j.settings.timezone.clone())
            .or_else(|| self.config.timezone.clone());
        crate::schedule::resolve_zone(name.as_deref()).unwrap_or(TimeZone::UTC)
    }

    /// Computes the next tick; at start-up, handles the ticks missed while down.
    async fn arm_schedule(&mut self, startup: bool) {
        self.set_next_tick(None);
        let Some(schedule) = self.schedule() else { return };
        let tz = self.zone();
        let now = Timestamp::now();
        let last = self.locks.last_tick().await;
        if startup && let Some(last) = last {
            self.handle_missed(last, now).await;
        }
        let from = last.map_or(now, |l| l.max(now));
        self.set_next_tick(schedule.next_after(from, &tz));
        match self.next_tick {
            Some(t) => self.scheduler_log.sys(
                Level::SysInfo,
                &format!(
                    "schedule \"{schedule}\" ({tz_name}): next run at {}",
                    crate::schedule::rfc3339(t, &tz),
                    tz_name = tz.iana_name().unwrap_or("local")
                ),
            ),
            None => {
                self.scheduler_log.sys(Level::SysWarn, &format!("schedule \"{schedule}\" has no future occurrence"))
            }
        }
    }

    /// The schedule in force, if ticks should fire.
    fn schedule(&self) -> Option<crate::schedule::Schedule> {
        let job = self.definition.good.as_ref()?;
        if self.config.switches.disable_schedule
            || self.config.switches.stopped
            || self.def().disabled
            || job.settings.run_mode == RunMode::OnDemand
        {
            return None;
        }
        job.settings.schedule.clone()
    }

    fn publish_run(&mut self, latest: Option<(String, RunStatus)>) {
        self.summary.send_modify(|s| s.latest = latest);
        self.shared.changed();
    }

    /// Sets the next tick and arms the wall-clock timer for it.
    fn set_next_tick(&mut self, tick: Option<Timestamp>) {
        self.next_tick = tick;
        self.summary.send_modify(|s| s.next_tick = tick);
        self.shared.changed();
        if let Err(e) = self.timer.set(tick) {
            self.scheduler_log.sys(Level::SysError, &format!("cannot arm the schedule timer: {e}"));
        }
    }

    /// The system clock was set: ticks now in the past were missed (catch-up
    /// rules apply); after a step back, nothing fires twice (the last claimed
    /// tick is the floor).
    fn on_clock_set(&mut self) {
        self.scheduler_log
            .sys(Level::SysWarn, "the system clock was set; the next tick is recomputed from the new time");
        self.set_next_tick(self.next_tick);
    }

    async fn on_tick(&mut self) {
        let (Some(tick), Some(schedule)) = (self.next_tick, self.schedule()) else { return };
        let now = Timestamp::now();
        if now < tick {
            return self.set_next_tick(Some(tick)); // woken early by a clock step back
        }
        if now.duration_since(tick).unsigned_abs() > LATE {
            let last = self.locks.last_tick().await.unwrap_or(tick - jiff::SignedDuration::from_secs(1));
            self.handle_missed(last.min(tick - jiff::SignedDuration::from_nanos(1)), now).await;
        } else {
            self.fire(tick, &schedule, None).await;
        }
        let tz = self.zone();
        self.set_next_tick(schedule.next_after(tick.max(now), &tz));
    }

    /// Claims `tick` across daemons and asks for a run.
    async fn fire(&mut self, tick: Timestamp, schedule: &crate::schedule::Schedule, missed: Option<String>) {
        match self.locks.claim_tick(tick).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                self.scheduler_log.sys(Level::SysError, &format!("cannot claim the schedule tick: {e}"));
                return;
            }
        }
        self.shared.metrics.tick_started(Timestamp::now().duration_since(tick).unsigned_abs());
        let trigger = format!("Schedule - {schedule}{}", missed.unwrap_or_default());
        let request = RunRequest { arguments: Vec::new(), text: String::new(), trigger };
        let Some(result) = self.request_run(request, true, None).await else {
            return self.scheduler_log.sys(Level::SysInfo, &format!("tick {tick}: replacing the active run"));
        };
        match result {
            Ok(Accepted::Started(id)) => {
                self.scheduler_log.sys(Level::SysInfo, &format!("tick {tick}: started run {id}"))
            }
            Ok(Accepted::Queued) => {
                self.scheduler_log.sys(Level::SysInfo, &format!("tick {tick}: queued behind the active run"))
            }
            Err(Refused::Running(_)) => {}
            Err(e) => self.scheduler_log.sys(Level::SysWarn, &format!("tick {tick}: not run: {e}")),
        }
    }

    /// Ticks in (`last`, `now`] were missed: one catch-up run per `catch_up`.
    async fn handle_missed(&mut self, last: Timestamp, now: Timestamp) {
        let (Some(schedule), Some(job)) = (self.schedule(), self.definition.good.clone()) else { return };
        let tz = self.zone();
        let mut missed = 0usize;
        let mut newest = None;
        let mut t = last;
        while let Some(next) = schedule.next_after(t, &tz) {
            if next > now || missed >= 1_000_000 {
                break;
            }
            missed += 1;
            newest = Some(next);
            t = next;
        }
        let Some(newest) = newest else { return };
        let age = now.duration_since(newest).unsigned_abs();
        let run = match job.settings.catch_up {
            CatchUp::None => false,
            CatchUp::Last => true,
            CatchUp::MaxAge(max) => age <= max,
        };
        let outcome = if run { "running it now" } else { "not run (catch_up)" };
        self.scheduler_log.sys(
            Level::SysWarn,
            &format!(
                "missed {missed} schedule(s), most recent at {} ({} ago): {outcome}",
                crate::schedule::rfc3339(newest, &tz),
                human(age)
            ),
        );
        if run {
            self.fire(newest, &schedule, Some(format!(" (missed tick at {newest})"))).await;
        } else {
            let _ = self.locks.claim_tick(newest).await;
        }
    }

    /// Runs left unfinished by this instance's previous life, or by a daemon
    /// that is gone, become Aborted.
    async fn mark_lost_runs(&mut self) {
        for id in history::run_ids(&self.data_dir) {
            let dir = self.data_dir.join(&id);
            let mut status =
                history::read_status(&dir).unwrap_or_else(|| lost_before_start(&dir, &self.shared.instance));
            if status.status.is_final() {
                continue;
            }
            let mine = status.instance == self.shared.instance;
            if !mine && self.shared.coordinator.instance_alive(&status.instance).await {
                continue;
            }
            status.status = RunState::Aborted;
            status.end_time = Some(format_time(std::time::SystemTime::now()));
            status.error =
                Some(format!("the daemon running it (instance {}) stopped before the run ended", status.instance));
            status.pid = None;
            let _ = history::write_status(&dir, &status);
            if let Ok(mut log) = LogFile::open(&dir.join(crate::layout::OUTPUT_LOG), &self.shared.instance, None) {
                log.sys(
                    Level::SysError,
                    &format!("run {id} marked Aborted: {}", status.error.as_deref().unwrap_or_default()),
                );
            }
        }
    }
}

/// The status of a run folder whose status was never written (the daemon
/// died between creating the folder and starting the process).
fn lost_before_start(dir: &std::path::Path, instance: &str) -> RunStatus {
    let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let start_time = jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", &id[..14.min(id.len())])
        .ok()
        .and_then(|dt| dt.to_zoned(TimeZone::UTC).ok())
        .map(|z| format_time(std::time::SystemTime::from(z.timestamp())))
        .unwrap_or_default();
    RunStatus {
        status: RunState::Initializing,
        start_time,
        end_time: None,
        trigger: String::new(),
        exit_code: None,
        signal: None,
        instance: instance.to_string(),
        pid: None,
        arguments: Vec::new(),
        error: None,
        duration_ms: None,
        cpu_ms: None,
        memory_peak: None,
    }
}

/// The next time the active run's limits must be looked at.
fn next_check(active: &Active) -> tokio::time::Instant {
    let period = (active.idle / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let next = tokio::time::Instant::now() + period;
    active.deadline.map_or(next, |d| d.min(next))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the active run (if any) is over.
async fn run_over(active: &mut Option<Active>) {
    match active {
        Some(a) => a.run.over(&mut a.log).await,
        None => std::future::pending().await,
    }
}
