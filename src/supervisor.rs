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
}

/// The actor of a job, by kind.
enum Actor {
    Continuous(continuous::Handle),
    Triggered(triggered::Handle),
}

impl Actor {
    fn update(&self, def: Arc<JobDef>, config: Arc<Config>) {
        match self {
            Actor::Continuous(h) => h.send(continuous::Control::Update { def, config }),
            Actor::Triggered(h) => h.send(triggered::Control::Update { def, config }),
        }
    }

    fn sync(&self, done: oneshot::Sender<()>) {
        match self {
            Actor::Continuous(h) => h.send(continuous::Control::Sync(done)),
            Actor::Triggered(h) => h.send(triggered::Control::Sync(done)),
        }
    }

    fn shutdown(&self, why: &'static str) {
        match self {
            Actor::Continuous(h) => h.send(continuous::Control::Shutdown { why }),
            Actor::Triggered(h) => h.send(triggered::Control::Shutdown { why }),
        }
    }
}

struct Entry {
    def: Arc<JobDef>,
    actor: Actor,
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
    Continuous(tokio::sync::watch::Receiver<crate::status::ContinuousStatus>),
    Triggered(tokio::sync::watch::Receiver<triggered::Summary>),
}

/// Owns the job table.
pub struct Supervisor {
    config: Arc<Config>,
    shared: Arc<Shared>,
    jobs: BTreeMap<JobKey, Entry>,
    tasks: JoinSet<()>,
    reloads: u64,
    catalog: tokio::sync::watch::Sender<Arc<Catalog>>,
}

impl Supervisor {
    pub fn new(config: Arc<Config>, shared: Arc<Shared>) -> Supervisor {
        let (catalog, _) = tokio::sync::watch::channel(Arc::new(Catalog::default()));
        Supervisor { config, shared, jobs: BTreeMap::new(), tasks: JoinSet::new(), reloads: 0, catalog }
    }

    /// The catalog as it changes.
    pub fn catalog(&self) -> tokio::sync::watch::Receiver<Arc<Catalog>> {
        self.catalog.subscribe()
    }

    fn publish(&self) {
        let jobs = self
            .jobs
            .iter()
            .map(|(key, entry)| {
                let live = match &entry.actor {
                    Actor::Continuous(h) => Live::Continuous(h.state.clone()),
                    Actor::Triggered(h) => Live::Triggered(h.state.clone()),
                };
                (key.clone(), CatalogEntry { def: entry.def.clone(), live })
            })
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
            tokio::select! {
                () = &mut shutdown => break,
                event = events.recv() => match event {
                    Some(Event::Changed(changes)) => self.on_changes(changes).await,
                    Some(Event::Apply { changes, done }) => self.on_apply(changes, done).await,
                    Some(Event::Reload(config)) => self.on_reload(config).await,
                    Some(Event::Ping(reply)) => { let _ = reply.send(()); }
                    Some(Event::Triggered { name, control }) => self.to_triggered(name, control),
                    None => break,
                },
                Some(result) = self.tasks.join_next() => {
                    if let Err(e) = result { tracing::error!(error = %e, "a job actor failed"); }
                }
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
        self.config = Arc::new(Config {
            jobs_dir: self.config.jobs_dir.clone(),
            data_dir: self.config.data_dir.clone(),
            temp_dir: self.config.temp_dir.clone(),
            instance_id: self.config.instance_id.clone(),
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
        if let Some(Entry { actor: Actor::Triggered(handle), .. }) = self.jobs.get(&key) {
            handle.send(control);
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
        let (config, shared) = (self.config.clone(), self.shared.clone());
        let actor = match key.kind {
            JobKind::Continuous => Actor::Continuous(continuous::spawn(def.clone(), config, shared, &mut self.tasks)),
            JobKind::Triggered => Actor::Triggered(triggered::spawn(def.clone(), config, shared, &mut self.tasks)),
        };
        self.jobs.insert(key, Entry { def, actor });
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
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "a job actor failed while stopping");
            }
        }
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
