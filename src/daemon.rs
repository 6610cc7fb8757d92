//! The daemon as a library function: [`run`] takes its configuration, a
//! shutdown future and a channel of configuration reloads, so that tests drive
//! it in-process exactly as `webjobs serve` does with signals.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

use crate::actor::Shared;
use crate::config::Config;
use crate::coordination::{Coordinator, InstanceError};
use crate::hash::fnv1a;
use crate::key::{JobKey, JobKind};
use crate::logs::{Level, LogFile};
use crate::process;
use crate::supervisor::{Event, Supervisor};
use crate::watcher::{self, WatchError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create {path}: {cause}")]
    CreateDir { path: std::path::PathBuf, cause: std::io::Error },
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Database(#[from] crate::coordination::postgres::PgError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot create the schedule clock (a timerfd): {0}")]
    Clock(std::io::Error),
    #[error(transparent)]
    Bind(#[from] crate::api::BindError),
    #[error("cannot read or create the API token {path}: {cause}")]
    Token { path: std::path::PathBuf, cause: std::io::Error },
}

/// Hooks for the service manager (systemd), called by [`run`].
pub trait Notifier: Send + 'static {
    /// Jobs are loaded and started.
    fn ready(&self) {}
    /// The daemon is alive and its supervisor responsive (watchdog).
    fn alive(&self) {}
    /// How often [`Notifier::alive`] must be called, if at all.
    fn watchdog_interval(&self) -> Option<Duration> {
        None
    }
    /// The watchdog, if any, must fire within `max` of a hang.
    fn limit_watchdog(&mut self, _max: Duration) {}
}

/// Runs the daemon until `shutdown` completes; then stops every job by the
/// stop protocol and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    hurry: impl Future<Output = ()> + Send + 'static,
    reloads: mpsc::Receiver<Config>,
    mut notifier: impl Notifier,
) -> Result<(), DaemonError> {
    let started = std::time::Instant::now();
    create_dirs(&config)?;
    let coordinator = Coordinator::open(&config.data_dir, config.postgres.as_ref()).await?;
    let registration = coordinator.register(&config.instance_id).await?;
    tracing::info!("coordination: {}", coordinator.describe());
    // Every listener is bound before any job starts: a daemon that cannot
    // serve its API fails with no job started.
    let listeners = crate::api::bind(&config).await?;
    let token = crate::api::load_or_create_token(&config.api.token_file)
        .map_err(|cause| DaemonError::Token { path: config.api.token_file.clone(), cause })?;
    let prefix = marker_prefix(&config);
    let containment =
        crate::cgroup::Containment::detect(&format!("webjobs-{}", prefix.trim_end_matches('/')), config.cgroups);
    tracing::info!("containment: {}", containment.describe());
    if matches!(containment, crate::cgroup::Containment::Cgroup(_))
        && crate::cgroup::favors_dynamic_changes() == Some(false)
    {
        tracing::info!(
            "cgroup2 is mounted without favordynmods: runs started together (many jobs on one tick) wait for each other to enter their cgroups; on Linux 6.0 or later, `mount -o remount,favordynmods <cgroup2 mount>` makes that cheap"
        );
    }
    let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
    let (chained_tx, chained) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        instance: config.instance_id.as_str().into(),
        marker_prefix: prefix,
        coordinator,
        containment,
        metrics: Arc::new(crate::metrics::Metrics::new()),
        clock: crate::clock::Clock::start().map_err(DaemonError::Clock)?,
        generation: Default::default(),
        run_permits: match config.switches.max_concurrent_runs {
            0 => None,
            n => Some(Arc::new(tokio::sync::Semaphore::new(n as usize))),
        },
        inboxes: crate::inbox::Inboxes::new(arrivals_tx),
        events: Default::default(),
        outbox: Arc::new(crate::outbox::Outbox::open(&config.data_dir)),
        chained: chained_tx,
        starts: Default::default(),
    });
    stop_leftover_cgroups(&config, &shared.containment).await;
    stop_leftovers(&config, &shared.marker_prefix).await;
    let reaper = process::spawn_reaper().map_err(DaemonError::Signals)?;
    let (events_tx, events_rx) = mpsc::channel(64);
    let _watch = watcher::watch(&config.jobs_dir, config.debounce, events_tx.clone())?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "watching the jobs folder");
    let config = Arc::new(config);
    let mut supervisor = Supervisor::new(config.clone(), shared.clone());
    supervisor.load().await;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "jobs loaded and started");
    let socket = crate::layout::socket(&config.data_dir, &config.instance_id);
    let basic = config.api.user.clone().zip(config.api.password.clone());
    let auth = Arc::new(crate::api::Auth { basic, token });
    let api_state = crate::api::ApiState {
        events: events_tx.clone(),
        config: config.clone(),
        shared: shared.clone(),
        catalog: supervisor.catalog(),
        lists: Default::default(),
        written: Default::default(),
    };
    let address = listeners.tcp_address();
    if let Some(address) = address {
        shared.coordinator.advertise(&advertised(&config, address)).await;
    }
    let reports = shared.coordinator.postgres().cloned().map(|pg| tokio::spawn(report_jobs(pg, supervisor.catalog())));
    let api_tasks = crate::api::serve_all(listeners, api_state, auth);
    if let Some(address) = address {
        tracing::info!(%address, "API and dashboard: http://{address}/");
    }
    tracing::info!(instance = %config.instance_id, jobs = %config.jobs_dir.display(), data = %config.data_dir.display(), "webjobs is running");
    notifier.ready();
    let forward = tokio::spawn(forward_reloads(reloads, events_tx.clone()));
    // With a database, the beats say which jobs have requests to recover.
    let instances = matches!(shared.coordinator, Coordinator::Files(_))
        .then(|| tokio::spawn(watch_instances(shared.clone(), events_tx.clone())));
    let beats =
        shared.coordinator.beats().map(|beats| tokio::spawn(forward_beats(beats, events_tx.clone(), config.clone())));
    let inboxes = tokio::spawn(forward_arrivals(arrivals, events_tx.clone()));
    let chains = tokio::spawn(forward_chained(chained, events_tx.clone()));
    let notifications = tokio::spawn(crate::outbox::send_forever(
        shared.outbox.clone(),
        config.notify_secret.clone(),
        shared.metrics.clone(),
        crate::outbox::Commands {
            data_dir: config.data_dir.clone(),
            instance: config.instance_id.as_str().into(),
            marker_prefix: shared.marker_prefix.clone(),
        },
    ));
    if let Some(pg) = &config.postgres {
        // A hung daemon whose keeper still renews its session would hold its
        // leases with no one minding its jobs: systemd ends it within ttl/2.
        notifier.limit_watchdog(pg.ttl * 2 / 5);
    }
    let watchdog = notifier.watchdog_interval().map(|every| tokio::spawn(watchdog(every, events_tx.clone(), notifier)));
    let bus = shared.clone();
    let shutdown = async move {
        shutdown.await;
        // No new requests while the jobs stop; event streams go on until they have.
        for task in api_tasks {
            task.abort();
        }
        bus.events.publish(crate::events::Event::daemon("daemon.stopping"));
    };
    let killer = shared.clone();
    let escalation = tokio::spawn(async move {
        hurry.await;
        tracing::warn!("second stop signal: sending SIGKILL to every process of every job now");
        killer.kill_everything();
    });
    supervisor.run(events_rx, shutdown).await;
    shared.events.publish(crate::events::Event::daemon("daemon.stopped"));
    escalation.abort();
    let _ = std::fs::remove_file(&socket);
    forward.abort();
    if let Some(instances) = instances {
        instances.abort();
    }
    if let Some(reports) = reports {
        reports.abort();
    }
    if let Some(beats) = beats {
        beats.abort();
    }
    shared.coordinator.deregister(registration).await;
    inboxes.abort();
    chains.abort();
    notifications.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    reaper.abort();
    if let crate::cgroup::Containment::Cgroup(root) = &shared.containment {
        // Empty once every run has ended; a populated one stays for the next start to end.
        root.remove_all();
    }
    tracing::info!("all jobs stopped; bye");
    Ok(())
}

async fn forward_reloads(mut reloads: mpsc::Receiver<Config>, events: mpsc::Sender<Event>) {
    while let Some(config) = reloads.recv().await {
        if events.send(Event::Reload(Arc::new(config))).await.is_err() {
            break;
        }
    }
}

/// Files announced in inboxes, to their jobs' actors.
/// A job got a request from another (`then`): its actor reads its queue again.
async fn forward_chained(mut chained: mpsc::UnboundedReceiver<String>, events: mpsc::Sender<Event>) {
    while let Some(name) = chained.recv().await {
        let control = crate::triggered::Control::Recover;
        if events.send(Event::Triggered { name, control }).await.is_err() {
            return;
        }
    }
}

async fn forward_arrivals(
    mut arrivals: mpsc::UnboundedReceiver<(String, crate::inbox::Arrival)>,
    events: mpsc::Sender<Event>,
) {
    while let Some((name, arrival)) = arrivals.recv().await {
        let control = crate::triggered::Control::Inbox(arrival);
        if events.send(Event::Triggered { name, control }).await.is_err() {
            return;
        }
    }
}

/// How often the other daemons of the data folder are looked at.
const INSTANCE_POLL: Duration = Duration::from_secs(2);

/// Tells the supervisor when another daemon sharing the data folder is gone
/// (its registration released): its taken requests are taken over.
async fn watch_instances(shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    let mut alive = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(INSTANCE_POLL);
    loop {
        tick.tick().await;
        let mut now = std::collections::BTreeSet::new();
        for id in shared.coordinator.instances().await {
            if *id != *shared.instance && shared.coordinator.instance_alive(&id).await {
                now.insert(id);
            }
        }
        for gone in alive.difference(&now) {
            if events.send(Event::InstanceGone(gone.clone())).await.is_err() {
                return;
            }
        }
        alive = now;
    }
}

/// What the database's beats tell: jobs with due requests (queued by any
/// daemon) or requests of a daemon that is gone read their queue again; a
/// job stopped or started on every daemon gets (or loses) its `disable.job`
/// here too.
async fn forward_beats(
    mut beats: tokio::sync::watch::Receiver<crate::coordination::postgres::Beat>,
    events: mpsc::Sender<Event>,
    config: Arc<Config>,
) {
    let prefix = format!("{}/", JobKind::Triggered.as_str());
    let mut applied = std::collections::BTreeMap::new();
    while beats.changed().await.is_ok() {
        let (names, toggled): (Vec<(String, bool)>, _) = {
            let beat = beats.borrow_and_update();
            // Orphans are recovered (and the queue read); due requests started.
            let orphaned = beat.orphaned.iter().map(|j| (j, true));
            let due = beat.due.iter().filter(|j| !beat.orphaned.contains(*j)).map(|j| (j, false));
            let jobs = orphaned.chain(due);
            (jobs.filter_map(|(j, o)| Some((j.strip_prefix(&prefix)?.to_string(), o))).collect(), beat.toggled.clone())
        };
        if toggled != applied {
            let changes: Vec<(String, bool)> =
                toggled.iter().filter(|(job, d)| applied.get(*job) != Some(*d)).map(|(j, d)| (j.clone(), *d)).collect();
            let config = config.clone();
            let _ = tokio::task::spawn_blocking(move || apply_toggles(&config, &changes)).await;
            applied = toggled;
        }
        for (name, orphaned) in names {
            let control = if orphaned { crate::triggered::Control::Recover } else { crate::triggered::Control::Due };
            if events.send(Event::Triggered { name, control }).await.is_err() {
                return;
            }
        }
    }
}

/// Writes or removes `disable.job` of the local jobs stopped or started on
/// every daemon (the watcher reloads them).
fn apply_toggles(config: &Config, changes: &[(String, bool)]) {
    for (job, disabled) in changes {
        let Some((kind, name)) = job.split_once('/').and_then(|(k, n)| Some((JobKind::parse(k)?, n))) else {
            continue;
        };
        let key = JobKey::new(kind, name);
        let Some(def) = crate::jobs::scan_job(config, &key) else { continue };
        let file = def.script_dir.join(crate::layout::DISABLE_FILE);
        let result = match (disabled, file.exists()) {
            (true, false) => std::fs::write(&file, b""),
            (false, true) => std::fs::remove_file(&file),
            _ => continue,
        };
        match result {
            Ok(()) => {
                tracing::info!(job = %key, "{} on every daemon of the cluster", if *disabled { "stopped" } else { "started" })
            }
            Err(e) => tracing::error!(job = %key, error = %e, "cannot follow the cluster's start/stop of the job"),
        }
    }
}

/// Where the other daemons of a cluster reach this one's API:
/// `coordination.advertise`, else the address it listens on (this host's
/// name when that is every address).
fn advertised(config: &Config, address: std::net::SocketAddr) -> String {
    if let Some(url) = config.postgres.as_ref().and_then(|pg| pg.advertise.clone()) {
        return url;
    }
    if address.ip().is_unspecified() {
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        return format!("http://{host}:{}", address.port());
    }
    format!("http://{address}")
}

/// Tells the database which jobs this daemon runs, at which content hash,
/// whenever that changes (version skew between daemons shows in `webjobs cluster`).
async fn report_jobs(
    pg: crate::coordination::postgres::Postgres,
    mut catalog: tokio::sync::watch::Receiver<Arc<crate::supervisor::Catalog>>,
) {
    // Content hashes are read again only for jobs whose files changed.
    let mut hashes: std::collections::HashMap<JobKey, (u64, String)> = Default::default();
    let mut last = None;
    loop {
        let jobs: Vec<(JobKey, u64, std::path::PathBuf)> = catalog
            .borrow_and_update()
            .jobs
            .iter()
            .map(|(key, entry)| (key.clone(), entry.def.fingerprint, entry.def.dir.clone()))
            .collect();
        let known = std::mem::take(&mut hashes);
        hashes = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(key, fingerprint, dir)| {
                    let hash = match known.get(&key) {
                        Some((f, hash)) if *f == fingerprint => hash.clone(),
                        _ => crate::jobs::content_hash(&dir),
                    };
                    (key, (fingerprint, hash))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        let report: serde_json::Map<String, serde_json::Value> = hashes
            .iter()
            .map(|(key, (_, hash))| (crate::coordination::postgres::job_name(key), hash.clone().into()))
            .collect();
        if last.as_ref() != Some(&report) {
            pg.report_jobs(serde_json::Value::Object(report.clone()));
            last = Some(report);
        }
        if catalog.changed().await.is_err() {
            return;
        }
    }
}

/// Pings the service manager only while the supervisor answers.
async fn watchdog(every: Duration, events: mpsc::Sender<Event>, notifier: impl Notifier) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let (tx, rx) = oneshot::channel();
        if events.send(Event::Ping(tx)).await.is_err() {
            return;
        }
        if rx.await.is_ok() {
            notifier.alive();
        }
    }
}

fn create_dirs(config: &Config) -> Result<(), DaemonError> {
    let dirs = [
        crate::layout::kind_dir(&config.jobs_dir, JobKind::Continuous),
        crate::layout::kind_dir(&config.jobs_dir, JobKind::Triggered),
        crate::layout::jobs_data_dir(&config.data_dir),
        config.temp_dir.clone(),
    ];
    for path in dirs {
        std::fs::create_dir_all(&path).map_err(|cause| DaemonError::CreateDir { path, cause })?;
    }
    Ok(())
}

/// The marker prefix is unique to this instance on this data folder, so two
/// daemons never mistake each other's processes for leftovers.
pub fn marker_prefix(config: &Config) -> String {
    let data = std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let key = fnv1a(format!("{}\0{}", data.display(), config.instance_id).as_bytes());
    format!("{}.{key:016x}/", config.instance_id)
}

/// Ends what a previous life of this daemon left in its run cgroups (it was
/// killed or crashed): everything in them, whatever it did to its group,
/// session or environment. Says so in each job's log.
async fn stop_leftover_cgroups(config: &Config, containment: &crate::cgroup::Containment) {
    let crate::cgroup::Containment::Cgroup(root) = containment else { return };
    for cgroup in root.leftovers() {
        let pids: Vec<i32> = cgroup.pids().iter().map(|p| p.as_raw()).collect();
        if !pids.is_empty() {
            cgroup.kill();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while cgroup.populated() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let name = cgroup.name();
            let mut parts = name.split('.');
            let kind = parts.next().and_then(JobKind::parse);
            let job = parts.next().map(str::to_string);
            let text = format!(
                "found {} process(es) left running by a previous daemon that did not stop cleanly, in the cgroup of its run (pids {pids:?}); killed them",
                pids.len()
            );
            tracing::warn!(cgroup = %name, "{text}");
            if let (Some(JobKind::Continuous), Some(job)) = (kind, job) {
                let path = config.job_data_dir(&JobKey::new(JobKind::Continuous, job)).join(crate::layout::JOB_LOG);
                if let Ok(mut log) = LogFile::open(&path, config.instance_id.as_str(), None) {
                    log.sys(Level::SysWarn, &text);
                }
            }
        }
        drop(cgroup);
    }
}

/// Ends the processes a previous run of this daemon left behind (it was
/// killed or crashed), and says so in each job's log.
async fn stop_leftovers(config: &Config, prefix: &str) {
    let found = process::find_marked(prefix);
    if found.is_empty() {
        return;
    }
    let mut by_job: std::collections::BTreeMap<JobKey, Vec<nix::unistd::Pid>> = Default::default();
    for (pid, marker) in &found {
        let mut parts = marker[prefix.len()..].split('/');
        if let (Some(kind), Some(name)) = (parts.next().and_then(JobKind::parse), parts.next()) {
            by_job.entry(JobKey::new(kind, name)).or_default().push(*pid);
        }
    }
    let pids: Vec<_> = found.iter().map(|(p, _)| *p).collect();
    process::signal_all(&pids, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| process::marker_of(*p).is_some()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process::signal_all(&pids, Signal::SIGKILL);
    for (key, pids) in by_job {
        let text = format!(
            "found {} process(es) left running by a previous daemon that did not stop cleanly (pids {:?}); stopped them",
            pids.len(),
            pids.iter().map(|p| p.as_raw()).collect::<Vec<_>>()
        );
        tracing::warn!(job = %key, "{text}");
        if key.kind == JobKind::Continuous {
            let path = config.job_data_dir(&key).join(crate::layout::JOB_LOG);
            if let Ok(mut log) = LogFile::open(&path, config.instance_id.as_str(), None) {
                log.sys(Level::SysWarn, &text);
            }
        }
    }
}
