//! The supervisor: the one task that owns the job table. It reacts to file
//! changes, configuration reloads and shutdown, and tells each job's actor
//! what changed. Nothing else holds job state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::actor::Shared;
use crate::config::Config;
use crate::continuous;
use crate::jobs::{self, JobDef};
use crate::key::{JobKey, JobKind};
use crate::triggered;

/// Which jobs may have changed on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub jobs: BTreeSet<JobKey>,
    /// Rescan everything (watcher overflow or error, a whole kind folder changed).
    pub full: bool,
    /// Jobs whose files are still being written: left alone, even by a full
    /// rescan (the watcher sends them once they are quiet).
    pub settling: BTreeSet<JobKey>,
}

/// Requests to the supervisor.
#[derive(Debug)]
pub enum Event {
    /// The watcher saw these jobs change.
    Changed(Changes),
    /// An API write changed these jobs: `done` is answered once the new state
    /// is loaded, published, and taken in by the (first) job's actor, so the
    /// API's answer comes after it.
    Apply {
        changes: Changes,
        done: oneshot::Sender<()>,
    },
    Reload(Arc<Config>),
    /// Answered when the supervisor loop is responsive (systemd watchdog).
    Ping(oneshot::Sender<()>),
    /// For the triggered job `name`. When there is no such job the control is
    /// dropped, which closes its reply channel: the caller reads "not found".
    Triggered {
        name: String,
        control: triggered::Control,
    },
    /// For the continuous job `name`; dropped likewise when there is none.
    Continuous {
        name: String,
        control: continuous::Control,
    },
    /// A daemon sharing the data folder is gone: every triggered job takes
    /// over what it had taken from the queue.
    InstanceGone(String),
}

/// The actor of a job, by kind; or, after it failed, what the job shows
/// until it is started again.
enum Actor {
    Continuous(continuous::Handle),
    Triggered(triggered::Handle),
    Failed(Live),
}

impl Actor {
    fn update(&self, def: Arc<JobDef>, config: Arc<Config>) {
        match self {
            Actor::Continuous(h) => h.send(continuous::Control::Update { def, config }),
            Actor::Triggered(h) => h.send(triggered::Control::Update { def, config }),
            Actor::Failed(_) => {}
        }
    }

    fn sync(&self, done: oneshot::Sender<()>) {
        match self {
            Actor::Continuous(h) => h.send(continuous::Control::Sync(done)),
            Actor::Triggered(h) => h.send(triggered::Control::Sync(done)),
            Actor::Failed(_) => {
                let _ = done.send(());
            }
        }
    }

    fn shutdown(&self, why: &'static str) {
        match self {
            Actor::Continuous(h) => h.send(continuous::Control::Shutdown { why }),
            Actor::Triggered(h) => h.send(triggered::Control::Shutdown { why }),
            Actor::Failed(_) => {}
        }
    }

    fn live(&self) -> Live {
        match self {
            Actor::Continuous(h) => Live::Continuous(h.state.clone()),
            Actor::Triggered(h) => Live::Triggered(h.state.clone()),
            Actor::Failed(live) => live.clone(),
        }
    }
}

struct Entry {
    def: Arc<JobDef>,
    actor: Actor,
    /// The actor's task (to tell its end from an older one's).
    task: tokio::task::Id,
    /// Consecutive failures of the job's actor, and when to start it again.
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

/// The first wait before a failed actor is started again; it doubles per
/// failure in a row, up to [`ACTOR_RETRY_MAX`].
const ACTOR_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const ACTOR_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The wait before a job's actor that failed `failures` times in a row is
/// started again.
fn actor_retry_delay(failures: u32) -> std::time::Duration {
    ACTOR_RETRY.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16))).min(ACTOR_RETRY_MAX)
}

/// A read-only view of the job table, published to the API on every change.
#[derive(Debug, Default)]
pub struct Catalog {
    /// False until the first scan is done (health: not ready).
    pub loaded: bool,
    pub jobs: BTreeMap<JobKey, CatalogEntry>,
}

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub def: Arc<JobDef>,
    pub live: Live,
}

/// What a job's actor publishes.
#[derive(Debug, Clone)]
pub enum Live {
    Continuous(crate::actor::Published<crate::status::ContinuousStatus>),
    Triggered(crate::actor::Published<triggered::Summary>),
}

/// Owns the job table.
pub struct Supervisor {
    config: Arc<Config>,
    shared: Arc<Shared>,
    jobs: BTreeMap<JobKey, Entry>,
    tasks: JoinSet<()>,
    /// Which job each actor task belongs to.
    owners: std::collections::HashMap<tokio::task::Id, JobKey>,
    reloads: u64,
    catalog: tokio::sync::watch::Sender<Arc<Catalog>>,
}

impl Supervisor {
    pub fn new(config: Arc<Config>, shared: Arc<Shared>) -> Supervisor {
        let (catalog, _) = tokio::sync::watch::channel(Arc::new(Catalog::default()));
        Supervisor {
            config,
            shared,
            jobs: BTreeMap::new(),
            tasks: JoinSet::new(),
            owners: Default::default(),
            reloads: 0,
            catalog,
        }
    }

    /// The catalog as it changes.
    pub fn catalog(&self) -> tokio::sync::watch::Receiver<Arc<Catalog>> {
        self.catalog.subscribe()
    }

    fn publish(&self) {
        let jobs = self
            .jobs
            .iter()
            .map(|(key, entry)| (key.clone(), CatalogEntry { def: entry.def.clone(), live: entry.actor.live() }))
            .collect();
        self.catalog.send_replace(Arc::new(Catalog { loaded: true, jobs }));
        self.shared.changed();
    }

    /// Loads every job and starts the continuous ones.
    pub async fn load(&mut self) {
        let config = self.config.clone();
        let defs = tokio::task::spawn_blocking(move || jobs::scan_all(&config)).await.unwrap_or_default();
        tracing::info!(jobs = defs.len(), "jobs found");
        for def in defs {
            self.upsert(def);
        }
        self.publish();
    }

    /// Serves events until `shutdown` completes, then stops every job.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let retry_at = self.jobs.values().filter_map(|e| e.retry_at).min();
            tokio::select! {
                () = &mut shutdown => break,
                event = events.recv() => match event {
                    Some(Event::Changed(changes)) => self.on_changes(changes).await,
                    Some(Event::Apply { changes, done }) => self.on_apply(changes, done).await,
                    Some(Event::Reload(config)) => self.on_reload(config).await,
                    Some(Event::Ping(reply)) => { let _ = reply.send(()); }
                    Some(Event::Triggered { name, control }) => self.to_triggered(name, control),
                    Some(Event::Continuous { name, control }) => {
                        if let Some(Actor::Continuous(handle)) =
                            self.jobs.get(&JobKey::new(JobKind::Continuous, name)).map(|e| &e.actor)
                        {
                            handle.send(control);
                        }
                    }
                    Some(Event::InstanceGone(id)) => {
                        tracing::warn!(instance = %id, "a daemon sharing the data folder is gone: its queued and running requests are taken over");
                        for entry in self.jobs.values() {
                            if let Actor::Triggered(handle) = &entry.actor {
                                handle.send(triggered::Control::Recover);
                            }
                        }
                    }
                    None => break,
                },
                Some(result) = self.tasks.join_next_with_id() => self.on_actor_end(result),
                () = sleep_until(retry_at) => self.restart_failed(),
            }
        }
        self.stop_all().await;
    }

    async fn on_changes(&mut self, changes: Changes) {
        self.reloads += 1;
        let config = self.config.clone();
        let known: Vec<JobKey> = self.jobs.keys().cloned().collect();
        let scanned = tokio::task::spawn_blocking(move || rescan(&config, &changes, &known)).await.unwrap_or_default();
        let changed = scanned.iter().filter(|(key, def)| self.differs(key, def.as_ref())).count();
        tracing::info!(reload = self.reloads, scanned = scanned.len(), changed, "reload");
        for (key, def) in scanned {
            match def {
                Some(def) => self.upsert(def),
                None => self.remove(&key),
            }
        }
        self.publish();
    }

    /// Loads the changed jobs, then answers `done` through each one's actor:
    /// an actor handles its messages in order, so its answer means it has
    /// taken in the new definition (schedule armed, start or stop begun).
    async fn on_apply(&mut self, changes: Changes, done: oneshot::Sender<()>) {
        let keys: Vec<JobKey> = changes.jobs.iter().cloned().collect();
        self.on_changes(changes).await;
        let actor = keys.iter().find_map(|k| self.jobs.get(k)).map(|e| &e.actor);
        match actor {
            Some(actor) => actor.sync(done),
            None => {
                let _ = done.send(());
            }
        }
    }

    async fn on_reload(&mut self, config: Arc<Config>) {
        tracing::info!("configuration reloaded");
        if config.jobs_dir != self.config.jobs_dir || config.data_dir != self.config.data_dir {
            tracing::warn!("jobs_dir and data_dir changes take effect at the next start");
        }
        if config.postgres != self.config.postgres {
            tracing::warn!("coordination changes take effect at the next start");
        }
        self.config = Arc::new(Config {
            jobs_dir: self.config.jobs_dir.clone(),
            data_dir: self.config.data_dir.clone(),
            temp_dir: self.config.temp_dir.clone(),
            instance_id: self.config.instance_id.clone(),
            postgres: self.config.postgres.clone(),
            ..(*config).clone()
        });
        let keys = self.jobs.keys().cloned().collect();
        self.on_changes(Changes { jobs: keys, full: true, ..Changes::default() }).await;
        for entry in self.jobs.values() {
            entry.actor.update(entry.def.clone(), self.config.clone());
        }
    }

    fn to_triggered(&self, name: String, control: triggered::Control) {
        let key = JobKey::new(JobKind::Triggered, name);
        match self.jobs.get(&key).map(|e| &e.actor) {
            Some(Actor::Triggered(handle)) => handle.send(control),
            Some(Actor::Failed(Live::Triggered(rx))) => {
                let why = rx.borrow().failure.clone().unwrap_or_default();
                triggered::refuse(control, &why);
            }
            _ => {}
        }
    }

    fn differs(&self, key: &JobKey, def: Option<&JobDef>) -> bool {
        match (self.jobs.get(key), def) {
            (Some(entry), Some(def)) => *entry.def != *def,
            (None, None) => false,
            _ => true,
        }
    }

    /// Adds a job or passes its new definition to its actor.
    fn upsert(&mut self, def: JobDef) {
        let key = def.key.clone();
        if let Some(entry) = self.jobs.get_mut(&key) {
            if *entry.def == def {
                return;
            }
            entry.def = Arc::new(def);
            entry.actor.update(entry.def.clone(), self.config.clone());
            return;
        }
        let def = Arc::new(def);
        let (actor, task) = self.spawn_actor(&def);
        self.jobs.insert(key, Entry { def, actor, task, failures: 0, retry_at: None });
    }

    fn spawn_actor(&mut self, def: &Arc<JobDef>) -> (Actor, tokio::task::Id) {
        let (config, shared) = (self.config.clone(), self.shared.clone());
        let (actor, task) = match def.key.kind {
            JobKind::Continuous => {
                let (handle, task) = continuous::spawn(def.clone(), config, shared, &mut self.tasks);
                (Actor::Continuous(handle), task)
            }
            JobKind::Triggered => {
                let (handle, task) = triggered::spawn(def.clone(), config, shared, &mut self.tasks);
                (Actor::Triggered(handle), task)
            }
        };
        self.owners.insert(task, def.key.clone());
        (actor, task)
    }

    /// An actor's task ended. Expected when its job was removed (or the
    /// daemon is stopping); otherwise it failed (a panic, or it could not
    /// start): the job shows the failure with its reason, every other job
    /// goes on, and the actor is started again after a backoff.
    fn on_actor_end(&mut self, result: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let (id, panic) = match result {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(panic_text(e))),
        };
        let Some(key) = self.owners.remove(&id) else { return };
        let Some(entry) = self.jobs.get_mut(&key) else { return };
        if entry.task != id {
            return;
        }
        let why = match panic {
            Some(panic) => format!("its supervising task failed: {panic}"),
            None => match entry.actor.live() {
                Live::Triggered(rx) => rx.borrow().failure.clone(),
                Live::Continuous(rx) => rx.borrow().error.clone(),
            }
            .unwrap_or_else(|| "its supervising task ended".to_string()),
        };
        entry.failures += 1;
        let delay = actor_retry_delay(entry.failures);
        entry.retry_at = Some(tokio::time::Instant::now() + delay);
        let reason = format!("{why}; started again in {}", crate::run::human(delay));
        // One cause failing many jobs at once (no descriptors left) is told once a minute, with a count.
        crate::repeats::report("actor failed", &why.as_str(), |held| {
            tracing::error!(job = %key, "the job cannot be run: {reason}{}", crate::repeats::held_note(held));
        });
        entry.actor = Actor::Failed(failed_live(&self.shared.instance, key.kind, &reason));
        self.publish();
    }

    /// Starts again the actors whose retry time has come.
    fn restart_failed(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<JobKey> =
            self.jobs.iter().filter(|(_, e)| e.retry_at.is_some_and(|t| t <= now)).map(|(k, _)| k.clone()).collect();
        for key in due {
            let Some(def) = self.jobs.get(&key).map(|e| e.def.clone()) else { continue };
            let (actor, task) = self.spawn_actor(&def);
            if let Some(entry) = self.jobs.get_mut(&key) {
                tracing::info!(job = %key, attempt = entry.failures + 1, "starting the job's actor again");
                (entry.actor, entry.task, entry.retry_at) = (actor, task, None);
            }
        }
        self.publish();
    }

    fn remove(&mut self, key: &JobKey) {
        if let Some(entry) = self.jobs.remove(key) {
            tracing::info!(job = %key, "job removed");
            entry.actor.shutdown("the job folder was removed");
        }
    }

    /// Stops every job by the stop protocol (all at once) and waits for them.
    async fn stop_all(&mut self) {
        tracing::info!(jobs = self.jobs.len(), "stopping all jobs");
        for entry in self.jobs.values() {
            entry.actor.shutdown("daemon stopping");
        }
        self.jobs.clear();
        self.owners.clear();
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "a job actor failed while stopping");
            }
        }
    }
}

/// What a job whose actor failed shows: Invalid, with the reason.
fn failed_live(instance: &str, kind: JobKind, reason: &str) -> Live {
    match kind {
        JobKind::Continuous => {
            let mut status = crate::status::ContinuousStatus::new(instance);
            status.status = crate::status::JobStatus::Invalid;
            status.error = Some(reason.to_string());
            Live::Continuous(crate::actor::Published::fixed(status))
        }
        JobKind::Triggered => {
            let summary = triggered::Summary { failure: Some(reason.to_string()), ..Default::default() };
            Live::Triggered(crate::actor::Published::fixed(summary))
        }
    }
}

/// The message of a panic, as far as it can be told.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .map_or_else(|| "a panic".to_string(), |m| format!("panic: {m}"))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the jobs named in `changes` (or all of them) from disk.
fn rescan(config: &Config, changes: &Changes, known: &[JobKey]) -> Vec<(JobKey, Option<JobDef>)> {
    let mut keys: BTreeSet<JobKey> = changes.jobs.clone();
    if changes.full {
        keys.extend(known.iter().cloned());
        for kind in JobKind::ALL {
            keys.extend(jobs::job_names(config, kind).into_iter().map(|n| JobKey::new(kind, n)));
        }
        keys.retain(|k| !changes.settling.contains(k));
    }
    keys.into_iter()
        .map(|key| {
            let def = jobs::scan_job(config, &key);
            (key, def)
        })
        .collect()
}
