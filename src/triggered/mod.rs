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
use runs::next_check;

mod recovery;
mod runs;
mod ticks;

use crate::actor::Shared;
use crate::actor::definition::Definition;
use crate::config::Config;
use crate::coordination::{JobCoordination, Lease};
use crate::history::{self, RunState, RunStatus};
use crate::jobs::JobDef;
use crate::key::JobKey;
use crate::logs::{Level, LogFile, Rotation};
use crate::run::Run;
use crate::settings::Overlap;

/// Messages from the supervisor (and, through it, from the API).
#[derive(Debug)]
pub enum Control {
    Update {
        def: Arc<JobDef>,
        config: Arc<Config>,
    },
    Run {
        request: Box<RunRequest>,
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
    /// Boxed: ten thousand idle jobs publish a pointer each.
    pub latest: Option<Box<(String, RunStatus)>>,
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
    let fut = async move {
        let summary = inbox.state.clone();
        match Box::pin(Actor::new(def, config, shared, inbox)).await {
            Ok(actor) => Box::pin(actor.run()).await,
            // The supervisor reads the reason, shows it and tries again later.
            Err(why) => summary.send_modify(|s| s.failure = Some(why)),
        }
    };
    let task = tasks.spawn(fut);
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

/// What the actor's loop woke up for.
enum Event {
    Control(Control),
    /// Nothing of the active run is left.
    RunOver,
    Timer(Wake),
    /// A retry's delay is over, or a queued request may start.
    Later,
    /// Time to look at the active run's limits.
    Check,
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
    rx: mpsc::UnboundedReceiver<Box<Control>>,
    summary: watch::Sender<Summary>,
    /// Armed at `next_tick`.
    timer: WallTimer,
    scheduler_log: LogFile,
    locks: JobCoordination,
    last_run_id: Option<String>,
    /// Boxed: an idle actor (most of ten thousand) keeps only a pointer.
    active: Option<Box<Active>>,
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
            .map_err(|e| format!("cannot open the scheduler log {}: {e}", log_path.display()))?
            .closing();
        let locks =
            shared.coordinator.job(&key).await.map_err(|e| format!("cannot use the job's coordination files: {e}"))?;
        let timer = shared.clock.timer();
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
        // Boxed: the actor's future stays small while it waits (ten thousand
        // jobs wait at once); what handles an event is allocated while it runs.
        Box::pin(self.mark_lost_runs()).await;
        let latest = history::run_ids(&self.data_dir)
            .into_iter()
            .next()
            .and_then(|id| history::read_status(&self.data_dir.join(&id)).map(|s| (id, s)));
        self.publish_run(latest);
        let disabled = self.def().disabled;
        self.summary.send_modify(|s| s.disabled = disabled);
        self.definition.report(&mut self.scheduler_log);
        Box::pin(self.arm_schedule(true)).await;
        while !(self.exiting && self.active.is_none()) {
            let event = self.next_event().await;
            Box::pin(self.handle(event)).await;
        }
        for (_, waiter) in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Waits for the next thing to happen.
    async fn next_event(&mut self) -> Event {
        let later = self.later;
        let check_at = self.active.as_ref().filter(|a| a.ending.is_none()).map(|a| next_check(a));
        let active = &mut self.active;
        tokio::select! {
            // Once stopping, nothing more is taken in: the supervisor drops the
            // channel after its Shutdown, and a closed channel is no second
            // Shutdown (which would SIGKILL a run in its grace period).
            control = self.rx.recv(), if !self.exiting => {
                Event::Control(control.map_or(Control::Shutdown { why: "daemon stopping" }, |b| *b))
            }
            () = run_over(active) => Event::RunOver,
            wake = self.timer.wait() => Event::Timer(wake),
            () = sleep_until(later) => Event::Later,
            () = sleep_until(check_at) => Event::Check,
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Control(control) => self.on_control(control).await,
            Event::RunOver => self.on_over().await,
            Event::Timer(Wake::Due) => self.on_tick().await,
            Event::Timer(Wake::ClockChanged) => self.on_clock_set(),
            Event::Later => self.on_later().await,
            Event::Check => self.on_check().await,
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Update { def, config } => self.on_update(def, config).await,
            Control::Sync(done) => {
                let _ = done.send(());
            }
            Control::Run { request, reply } => {
                self.request_run(*request, false, Some(reply)).await;
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
        if self.exiting {
            return Err(Refused::Failed("the daemon is stopping".into()));
        }
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

    fn publish_run(&mut self, latest: Option<(String, RunStatus)>) {
        self.summary.send_modify(|s| s.latest = latest.map(Box::new));
        self.shared.changed();
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the active run (if any) is over.
async fn run_over(active: &mut Option<Box<Active>>) {
    match active {
        // Boxed too: only an actor with a run pays for the run's future.
        Some(a) => Box::pin(a.run.over(&mut a.log)).await,
        None => std::future::pending().await,
    }
}
