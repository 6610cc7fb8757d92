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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::oneshot;

use crate::clock::{Wake, WallTimer};
use runs::next_check;

mod inbox;
mod queue;
mod recovery;
mod runs;
mod ticks;

use queue::Dispatch;

use crate::actor::Shared;
use crate::actor::definition::Definition;
use crate::config::Config;
use crate::coordination::{JobCoordination, Lease, Taken};
use crate::events;
use crate::history::{self, RunState, RunStatus};
use crate::jobs::JobDef;
use crate::key::JobKey;
use crate::logs::{Level, LogFile, Rotation};
use crate::queue::{Entry, Index, Slot};
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
    /// The queued requests (at most `limit`; with `id`, only that one), or the dead ones.
    Queue {
        dead: bool,
        limit: usize,
        id: Option<String>,
        reply: oneshot::Sender<Vec<Entry>>,
    },
    /// Removes a queued request (not started yet).
    Dequeue {
        id: String,
        reply: oneshot::Sender<Result<Entry, Refused>>,
    },
    /// Queues a dead request again (by its id or one of its runs').
    Revive {
        id: String,
        reply: oneshot::Sender<Result<Entry, Refused>>,
    },
    /// A daemon sharing the data folder is gone: take over what it had
    /// taken, and read the queue again.
    Recover,
    /// Requests are due in the shared queue (a database's beat): start them
    /// if slots are free, reading the queue again when none is known here.
    Due,
    /// A file arrived in the job's inbox (or the inbox must be read again).
    Inbox(crate::inbox::Arrival),
    /// Answered once every message before it has been taken in.
    Sync(oneshot::Sender<()>),
}

/// Where the answer to a run request goes.
pub type RunReply = oneshot::Sender<Result<Accepted, Refused>>;

/// A request for a run.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The script's argv after its own.
    pub arguments: Vec<String>,
    /// The arguments as one string, for `WEBJOBS_COMMAND_ARGUMENTS`: Kudu's
    /// `?arguments=` as given, or [`crate::arguments::join`] of exact words.
    pub text: String,
    /// `External - <who>`, `Schedule - <expr>`, `Retry …`.
    pub trigger: String,
    /// Given to the run on stdin and as `WEBJOBS_PAYLOAD_FILE`.
    pub payload: Option<Vec<u8>>,
    /// Dedup key: refused while a request with it is queued or running.
    pub key: Option<String>,
    /// -100 (last) to 100 (first).
    pub priority: i32,
    pub correlation_id: Option<String>,
    /// A one-off run at this time (queued until then).
    pub at: Option<Timestamp>,
    /// Queued whatever the overlap policy says (`webjobs enqueue`), rather
    /// than refused while a run is active (Kudu's run).
    pub queue: bool,
    /// The schedule tick it is for (`WEBJOBS_TICK`).
    pub tick: Option<Timestamp>,
}

impl RunRequest {
    pub fn new(trigger: String, arguments: Vec<String>, text: String) -> RunRequest {
        RunRequest { trigger, arguments, text, ..RunRequest::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The run's id, and its request's.
    Started { run: String, request: String },
    /// Queued (the request's id): it starts when the job, the daemon or its
    /// time allows.
    Queued(String),
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
    Duplicate(String),
    /// Another daemon claimed the schedule tick (and stored its request).
    #[error("the schedule tick was claimed by another daemon")]
    TickTaken,
    /// The request could not be stored (`full`: no space left).
    #[error("cannot queue the request: {why}")]
    Storage { why: String, full: bool },
    #[error("{0}")]
    Failed(String),
}

/// What the actor publishes about its job (for the API, without file reads).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The newest run this daemon knows of.
    pub latest: Option<Latest>,
    pub next_tick: Option<Timestamp>,
    /// `disable.job` is present: no schedule, no runs.
    pub disabled: bool,
    /// Why the job's actor could not run (it is started again later).
    pub failure: Option<String>,
    /// Requests in the queue (not started yet).
    pub queued: u32,
    /// When the oldest of them that may start now was queued (ms since the epoch).
    pub oldest_queued_ms: Option<i64>,
}

/// A run as the job's summary keeps it: its id and its status as JSON, in
/// one string, parsed when read. Parsed, with its strings, a status took
/// about 800 bytes; as text, about 300 (ten thousand jobs keep one each).
#[derive(Debug, Clone)]
pub struct Latest {
    /// The id, then the status's JSON.
    text: Box<str>,
    id_len: u32,
    /// Its state, read without parsing.
    pub state: RunState,
}

impl Latest {
    pub fn new(id: &str, status: &RunStatus) -> Latest {
        // A status always serializes (strings, numbers and JSON values).
        let json = serde_json::to_string(status).unwrap_or_default();
        let mut text = String::with_capacity(id.len() + json.len());
        text.push_str(id);
        text.push_str(&json);
        Latest { text: text.into_boxed_str(), id_len: id.len() as u32, state: status.status }
    }

    pub fn id(&self) -> &str {
        &self.text[..self.id_len as usize]
    }

    /// The status (`None` only if its JSON could not be read back, which a
    /// status written by [`Latest::new`] always can).
    pub fn status(&self) -> Option<RunStatus> {
        serde_json::from_str(&self.text[self.id_len as usize..]).ok()
    }
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
        Control::Queue { reply, .. } => {
            let _ = reply.send(Vec::new());
        }
        Control::Dequeue { reply, .. } | Control::Revive { reply, .. } => {
            let _ = reply.send(Err(Refused::Invalid(why.to_string())));
        }
        Control::Update { .. } | Control::Shutdown { .. } | Control::Recover | Control::Due | Control::Inbox(_) => {}
    }
}

/// What the actor's loop woke up for.
enum Event {
    Control(Control),
    /// Nothing of active run number `.0` is left.
    RunOver(usize),
    Timer(Wake),
    /// A retry's delay is over, or a queued request may start.
    Later,
    /// Time to look at the active run's limits.
    Check,
    /// Time to read the inbox.
    Scan,
    /// A run slot of the daemon (`max_concurrent_runs`) is free for us.
    Permit(tokio::sync::OwnedSemaphorePermit),
    /// The run lock of active run number `.0` is lost.
    LeaseLost(usize),
}

/// Why an active run is being ended by us.
#[derive(Debug, Clone)]
enum End {
    Cancelled,
    Replaced,
    Timeout(Duration),
    Idle(Duration),
    Shutdown(&'static str),
    /// The run lock can no longer be trusted (a database backend that
    /// cannot renew this daemon's session): the run stops before another
    /// daemon may start one.
    LeaseLost(String),
}

struct Active {
    id: String,
    dir: PathBuf,
    run: Run,
    log: LogFile,
    status: RunStatus,
    _lease: Lease,
    /// Held while the run is active (`max_concurrent_runs`).
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The request it is an attempt of (taken from the queue).
    taken: Taken,
    deadline: Option<tokio::time::Instant>,
    idle: Duration,
    last_bytes: u64,
    last_cpu: u64,
    last_activity: tokio::time::Instant,
    /// When its limits were last looked at.
    last_checked: tokio::time::Instant,
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
    rx: crate::actor::Mailbox<Control>,
    summary: crate::actor::Publisher<Summary>,
    /// Armed at `next_tick`.
    timer: WallTimer,
    scheduler_log: LogFile,
    locks: JobCoordination,
    last_run_id: Option<String>,
    /// The active runs (at most `max_parallel`), oldest first; an idle
    /// actor (most of ten thousand) keeps an empty list.
    active: Vec<Active>,
    /// The queued requests of the job (its durable queue's index).
    index: Index,
    next_tick: Option<Timestamp>,
    /// When to try starting the head of the queue again (a request coming
    /// due, or a run lock held elsewhere).
    later: Option<tokio::time::Instant>,
    /// Waiting for a run slot of the daemon (`max_concurrent_runs`).
    want_permit: bool,
    /// The folder watched for trigger files, and when to read it next.
    inbox: Option<std::path::PathBuf>,
    scan_at: Option<tokio::time::Instant>,
    /// A run slot received while waiting, used by the next start.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    waiters: Vec<(String, oneshot::Sender<()>)>,
    /// `overlap: replace`: the (queued) request that starts once the active
    /// run is over, and who waits for its answer (boxed: seldom there).
    replacement: Option<Box<(Slot, Option<RunReply>)>>,
    exiting: bool,
    /// The last run that ended failed or was aborted (for `recovered`).
    failing: bool,
    /// Requests whose end the store (a database) did not take in yet.
    unsettled: Vec<(Taken, queue::Settle)>,
}

impl Actor {
    async fn new(
        def: Arc<JobDef>,
        config: Arc<Config>,
        shared: Arc<Shared>,
        inbox: crate::actor::Inbox<Control, Summary>,
    ) -> Result<Box<Actor>, String> {
        let key = def.key.clone();
        let data_dir = config.job_data_dir(&key);
        let rotation = Some(Rotation { max_size: 1024 * 1024, keep: 1 });
        let log_path = data_dir.join(crate::layout::SCHEDULER_LOG);
        let scheduler_log = LogFile::open(&log_path, shared.instance.clone(), rotation)
            .map_err(|e| format!("cannot open the scheduler log {}: {e}", log_path.display()))?
            .closing();
        let locks =
            shared.coordinator.job(&key).await.map_err(|e| format!("cannot use the job's coordination files: {e}"))?;
        let timer = shared.clock.timer();
        Ok(Box::new(Actor {
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
            active: Vec::new(),
            index: Index::default(),
            next_tick: None,
            later: None,
            want_permit: false,
            permit: None,
            inbox: None,
            scan_at: None,
            waiters: Vec::new(),
            replacement: None,
            exiting: false,
            failing: false,
            unsettled: Vec::new(),
        }))
    }

    /// Boxed, the actor is kept once: the task's future and this one's hold a
    /// pointer (by value it was copied into both, 800 bytes each).
    async fn run(mut self: Box<Self>) {
        // Boxed: the actor's future stays small while it waits (ten thousand
        // jobs wait at once); what handles an event is allocated while it runs.
        Box::pin(self.mark_lost_runs()).await;
        self.publish_latest();
        let disabled = self.def().disabled;
        self.summary.send_modify(|s| s.disabled = disabled);
        self.definition.report(&mut self.scheduler_log);
        Box::pin(self.arm_schedule(true)).await;
        Box::pin(self.recover_queue(true)).await;
        Box::pin(self.arm_inbox()).await;
        Box::pin(self.recover_inbox()).await;
        while !(self.exiting && self.active.is_empty()) {
            let event = self.next_event().await;
            Box::pin(self.handle(event)).await;
        }
        for (_, waiter) in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Publishes the newest run on disk (at start). Not in `run`: a run's
    /// status held there would stay in the task's future for its whole life.
    fn publish_latest(&mut self) {
        let latest = history::run_ids(&self.data_dir)
            .into_iter()
            .next()
            .and_then(|id| history::read_status(&self.data_dir.join(&id)).map(|s| (id, s)));
        self.failing = latest.as_ref().is_some_and(|(_, s)| matches!(s.status, RunState::Failed | RunState::Aborted));
        self.publish_run(latest.map(|(id, status)| Latest::new(&id, &status)));
    }

    /// Waits for the next thing to happen.
    async fn next_event(&mut self) -> Event {
        if self.active.is_empty() && self.later.is_none() && self.scan_at.is_none() && !self.want_permit {
            // Idle (most of ten thousand jobs, most of the time): only a
            // message or the schedule's timer can come. This small future is
            // what the task holds while it waits (the task's future went from
            // 808 to 192 bytes with `publish_latest`); the whole one below is
            // allocated while there is more to wait for.
            return tokio::select! {
                control = self.rx.recv(), if !self.exiting => {
                    Event::Control(control.unwrap_or(Control::Shutdown { why: "daemon stopping" }))
                }
                wake = self.timer.wait() => Event::Timer(wake),
            };
        }
        Box::pin(self.next_busy_event()).await
    }

    /// Waits for the next thing to happen while runs are active, a retry or
    /// a queued request is due, the inbox is read, or a run slot is wanted.
    async fn next_busy_event(&mut self) -> Event {
        let later = self.later;
        let check_at = self.active.iter().filter(|a| a.ending.is_none()).map(next_check).min();
        let lost = lease_lost(&self.active);
        let active = &mut self.active;
        tokio::select! {
            // Once stopping, nothing more is taken in: the supervisor drops the
            // channel after its Shutdown, and a closed channel is no second
            // Shutdown (which would SIGKILL a run in its grace period).
            control = self.rx.recv(), if !self.exiting => {
                Event::Control(control.unwrap_or(Control::Shutdown { why: "daemon stopping" }))
            }
            lost = lost => Event::LeaseLost(lost),
            over = run_over(active) => Event::RunOver(over),
            wake = self.timer.wait() => Event::Timer(wake),
            () = sleep_until(later) => Event::Later,
            () = sleep_until(check_at) => Event::Check,
            () = sleep_until(self.scan_at) => Event::Scan,
            permit = acquire(self.shared.run_permits.as_ref(), self.want_permit) => Event::Permit(permit),
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Control(control) => self.on_control(control).await,
            Event::RunOver(n) => self.on_over(n).await,
            Event::LeaseLost(n) => {
                let why = self.active.get(n).map(|a| a._lease.why_lost()).unwrap_or_default();
                self.scheduler_log.sys(Level::SysError, &format!("run lock lost: {why}; the run is stopped"));
                self.end_run(n, End::LeaseLost(why));
            }
            Event::Timer(Wake::Due) => self.on_tick().await,
            Event::Timer(Wake::ClockChanged) => self.on_clock_set(),
            Event::Later => self.on_later().await,
            Event::Check => self.on_check().await,
            Event::Scan => self.scan_inbox().await,
            Event::Permit(permit) => {
                self.want_permit = false;
                self.permit = Some(permit);
                self.fill().await;
            }
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
                if self.active.iter().any(|a| a.id == run) {
                    self.waiters.push((run, reply));
                } else {
                    let _ = reply.send(());
                }
            }
            Control::Shutdown { why } => {
                // Queued requests stay queued (on disk) for the next start.
                self.exiting = true;
                self.scan_at = None;
                if let Some(dir) = self.inbox.take() {
                    self.shared.inboxes.unwatch(&self.key.name, &dir);
                }
                self.index.clear();
                self.later = None;
                self.want_permit = false;
                self.set_next_tick(None);
                if let Some((slot, Some(reply))) = self.replacement.take().map(|r| *r) {
                    let _ = reply.send(Ok(Accepted::Queued(slot.id.to_string())));
                }
                self.end_all(End::Shutdown(why));
            }
            Control::Queue { dead, limit, id, reply } => {
                let entries =
                    if dead { self.locks.dead().await } else { self.locks.queued(limit, id.as_deref()).await };
                let _ = reply.send(entries);
            }
            Control::Dequeue { id, reply } => {
                let _ = reply.send(self.dequeue(&id).await);
            }
            Control::Revive { id, reply } => {
                let _ = reply.send(self.revive(&id).await);
            }
            Control::Recover => {
                if !self.exiting {
                    self.recover_queue(false).await;
                    self.recover_inbox().await;
                }
            }
            Control::Due => {
                if !self.exiting {
                    self.on_due().await;
                }
            }
            Control::Inbox(arrival) => self.on_arrival(arrival).await,
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
        let invalid = self.definition.update(def);
        self.definition.report(&mut self.scheduler_log);
        if let Some(errors) = invalid {
            self.tell(self.definition.invalid_event(errors));
        }
        let disabled = self.def().disabled;
        if disabled != before.3 {
            self.on_disabled_changed();
        }
        if before
            != (self.definition.good.clone(), self.config.timezone.clone(), self.config.switches.clone(), disabled)
        {
            self.arm_schedule(false).await;
            self.arm_inbox().await;
            self.fill().await;
        }
    }

    /// `disable.job` appeared or went away: say so; a stop drops queued
    /// requests (an active run ends by itself; `cancel` ends it now).
    fn on_disabled_changed(&mut self) {
        let disabled = self.def().disabled;
        self.summary.send_modify(|s| s.disabled = disabled);
        self.shared.changed();
        let status = if disabled { "Stopped" } else { "Ready" };
        self.shared.events.publish(events::Event::about(&self.key, "job.status").status(status));
        let text = if disabled {
            format!(
                "stopped (disable.job is present): schedule paused, runs refused; {} queued request(s) wait until it is started",
                self.index.len()
            )
        } else {
            "started (disable.job removed): schedule and runs resume".to_string()
        };
        self.scheduler_log.sys(Level::SysInfo, &text);
    }

    /// Queues a request and starts it if it is first in line and the job is
    /// free, or says why not (the overlap policy decides while a run is
    /// active). The answer goes to `reply` (when given) and is returned; with
    /// `overlap: replace` it comes once the active run is over and the new
    /// one started (`None` here).
    async fn request_run(
        &mut self,
        request: RunRequest,
        scheduled: bool,
        reply: Option<RunReply>,
    ) -> Option<Result<Accepted, Refused>> {
        let queue_only = request.queue || request.at.is_some();
        let result = match self.decide(scheduled, queue_only) {
            Err(refused) => Err(refused),
            Ok(overlap) => match self.store(request).await {
                Err(refused) => Err(refused),
                Ok(slot) if overlap == Some(Overlap::Replace) => {
                    // The active run stops; this request starts when it is over.
                    if let Some((older, Some(reply))) = self.replacement.replace(Box::new((slot, reply))).map(|r| *r) {
                        let _ = self.locks.remove_queued(&older.id).await;
                        self.index.remove(&older);
                        let _ =
                            reply.send(Err(Refused::Running("replaced by a newer request (overlap: replace)".into())));
                    }
                    self.end_all(End::Replaced);
                    return None;
                }
                Ok(slot) => self.start_or_queue(slot, overlap.is_some() || queue_only).await,
            },
        };
        if let Some(reply) = reply {
            let _ = reply.send(result.clone());
        }
        Some(result)
    }

    /// After `slot` was queued: starts the queue's head; says whether that was
    /// `slot`. A request that may not wait (Kudu's run, `overlap: skip`) and
    /// cannot start because another daemon runs the job is taken back out.
    async fn start_or_queue(&mut self, slot: Slot, may_wait: bool) -> Result<Accepted, Refused> {
        let id = slot.id.to_string();
        // A run active on another daemon: `overlap: skip` refuses, the other
        // policies wait (a run elsewhere cannot be replaced from here).
        let skip = self.definition.good.as_ref().is_none_or(|j| j.settings.overlap == Overlap::Skip);
        match self.dispatch(None).await {
            Dispatch::Started { request, run, .. } if request == id => Ok(Accepted::Started { run, request }),
            Dispatch::Busy
                if !may_wait && skip && self.index.next(Timestamp::now().as_millisecond()).as_ref() == Some(&slot) =>
            {
                let holder = self.locks.run_holder().await.unwrap_or_else(|| "another daemon".into());
                let _ = self.locks.remove_queued(&id).await;
                self.index.remove(&slot);
                self.publish_queue();
                Err(Refused::Running(format!("a run is active on {holder}")))
            }
            _ => Ok(Accepted::Queued(id)),
        }
    }

    /// Whether a request may be queued: `Ok(None)` when no run is active,
    /// `Ok(Some(overlap))` when one is and the request waits (`queue`, an
    /// explicit enqueue) or replaces it, or why not.
    fn decide(&mut self, scheduled: bool, queue_only: bool) -> Result<Option<Overlap>, Refused> {
        if self.exiting {
            return Err(Refused::Failed("the daemon is stopping".into()));
        }
        if self.config.switches.stopped {
            return Err(Refused::Stopped);
        }
        if self.def().disabled {
            return Err(Refused::Disabled(self.key.name.to_string()));
        }
        let Some(job) = self.definition.good.clone() else {
            return Err(Refused::Invalid(self.def().errors().join("; ")));
        };
        if (self.active.len() as u32) < job.settings.max_parallel {
            return Ok(None);
        }
        let Some(active) = self.active.last_mut() else { return Ok(None) };
        if queue_only {
            return Ok(Some(Overlap::Queue));
        }
        match job.settings.overlap {
            Overlap::Skip => {
                let why = format!("run {} is still running", active.id);
                if scheduled {
                    let text = format!("schedule tick skipped: {why} (overlap: skip)");
                    active.log.sys(Level::SysWarn, &text);
                    self.scheduler_log.sys(Level::SysWarn, &text);
                    let event = events::Event::about(&self.key, "tick.skipped").status("Skipped");
                    self.tell(event.detail(serde_json::json!({"reason": why})));
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

    /// Tells listeners that run `id` started or ended (`run.started`, `run.ended`).
    fn run_event(&mut self, kind: &'static str, id: &str, status: &RunStatus) {
        let event = events::Event::about(&self.key, kind)
            .run(id)
            .request(status.request.as_deref())
            .status(status.status.as_str())
            .detail(status);
        self.tell(event);
        if kind == "run.ended" {
            // "recovered": the first success after failed (or aborted) runs.
            let recovered = status.status == RunState::Success && self.failing;
            match status.status {
                RunState::Failed | RunState::Aborted => self.failing = true,
                RunState::Success => self.failing = false,
                _ => {}
            }
            if recovered {
                let event = events::Event::about(&self.key, "job.recovered").run(id).status("Success").detail(status);
                self.tell(event);
            }
        }
    }

    /// Publishes `event` and notifies who wants it (see [`crate::actor::tell`]).
    fn tell(&mut self, event: events::Event) {
        let own = self.definition.notify_rules();
        let run_dir = match (&event.run, event.kind) {
            (Some(run), kind) if kind != "run.started" => Some(self.data_dir.join(run)),
            _ => None,
        };
        crate::actor::tell(&self.shared, &own, &self.config.notify, event, run_dir.as_deref(), &mut self.scheduler_log);
    }

    fn publish_run(&mut self, latest: Option<Latest>) {
        self.summary.send_modify(|s| s.latest = latest);
        self.shared.changed();
    }
}

/// A future held by an idle actor's select: boxed only when armed, so that
/// ten thousand idle actors each hold a pointer, not the future.
type Armed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A permit of the daemon's run slots, once `wanted` and one is free.
fn acquire(
    permits: Option<&Arc<tokio::sync::Semaphore>>,
    wanted: bool,
) -> Armed<'static, tokio::sync::OwnedSemaphorePermit> {
    match permits {
        Some(permits) if wanted => {
            let permits = permits.clone();
            Box::pin(async move {
                match permits.acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => std::future::pending().await,
                }
            })
        }
        // A zero-sized future: boxing it allocates nothing.
        _ => Box::pin(std::future::pending()),
    }
}

fn sleep_until(at: Option<tokio::time::Instant>) -> Armed<'static, ()> {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at)),
        None => Box::pin(std::future::pending()),
    }
}

/// Resolves when one of the active runs is over, with its place in the list.
/// The first active run (not already ending) whose run lock is lost.
fn lease_lost(active: &[Active]) -> Armed<'static, usize> {
    // Database leases only: a run lock file is not watched (the run ends
    // first; see docs/cluster.md).
    let mut watched =
        active.iter().enumerate().filter(|(_, a)| a.ending.is_none() && a._lease.fence().is_some()).peekable();
    if watched.peek().is_none() {
        return Box::pin(std::future::pending());
    }
    let all: Vec<_> = watched
        .map(|(n, a)| {
            let lost = a._lease.watch_lost();
            Box::pin(async move {
                lost.await;
                n
            })
        })
        .collect();
    Box::pin(async move { futures_util::future::select_all(all).await.0 })
}

fn run_over(active: &mut [Active]) -> Armed<'_, usize> {
    match active {
        [] => Box::pin(std::future::pending()),
        [a] => Box::pin(async move {
            a.run.over(&mut a.log).await;
            0
        }),
        many => {
            let all = many.iter_mut().map(|a| Box::pin(a.run.over(&mut a.log)));
            Box::pin(async move { futures_util::future::select_all(all).await.1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_run_reads_back_as_it_was_published() {
        let json = r#"{"Status": "Running", "StartTime": "2026-11-24T10:07:01.014Z", "Trigger": "Schedule - 1 * * * * *",
            "Instance": "hp", "Pid": 42, "Arguments": ["a b", "ü"], "Request": "r-1", "Attempt": 2,
            "Result": {"rows": [1, 2.5, null]}, "Progress": {"percent": 42.5, "message": "half \"way\""}}"#;
        let status: RunStatus = serde_json::from_str(json).unwrap();
        let latest = Latest::new("202611241007010014", &status);
        assert_eq!(latest.id(), "202611241007010014");
        assert_eq!(latest.state, RunState::Running);
        assert_eq!(latest.status(), Some(status));
    }
}
