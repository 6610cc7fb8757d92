//! What daemons sharing one job set agree on, behind one contract:
//!
//! - **instances**: each daemon registers under its instance id for its whole
//!   life; a second daemon with the same id is refused; anyone can ask whether
//!   an instance is alive (to tell a dead daemon's runs from a live one's);
//! - **singleton lease**: at most one daemon runs a singleton continuous job;
//!   the lease is released when its holder dies, however it dies — and, for
//!   a lease with a descriptor ([`Lease::fd`]), only once no process of the
//!   holder's run is left (the run inherits the descriptor);
//! - **run lock**: at most one active run of a triggered job across daemons;
//! - **schedule ticks**: each tick of a job's schedule is claimed by exactly
//!   one daemon, and the newest claimed tick is the floor for the next one
//!   (nothing fires twice after a clock step or a restart);
//! - **run queue**: a request is stored before it is acknowledged, taken by
//!   exactly one daemon, and stays taken until its run's end puts it away
//!   (done, requeued for a retry, or dead); the requests a daemon that is
//!   gone had taken are found and recovered by another.
//!
//! The actors use [`Coordinator`] and [`JobCoordination`] only. Two
//! backends: [`files`] (kernel file locks in a shared data folder: one host,
//! or NFS) and [`postgres`] (sessions and leases on the database's clock,
//! with fencing tokens, for machines with no shared disk). A lease can be
//! lost while held (a database backend that cannot renew it):
//! [`Lease::lost`] says when, and its holder stops what it guards.

pub mod files;
mod pg_writes;
pub mod postgres;
pub mod queue;
mod tick_claims;

use std::io;
use std::path::Path;

use crate::key::JobKey;
use crate::queue::{Entry, Slot};

pub use files::InstanceError;
pub use queue::{Duplicate, Taken, Unstored};

/// How this daemon coordinates with the others.
#[derive(Debug, Clone)]
pub enum Coordinator {
    /// Lock files in the shared data folder.
    Files(files::Files),
    /// A PostgreSQL database (and lock files for this daemon's own data folder).
    Postgres(files::Files, postgres::Postgres),
}

/// A held lease (singleton, run lock); released when dropped, or when the
/// process holding it dies.
#[derive(Debug)]
pub enum Lease {
    Files(files::FileLease),
    Postgres(postgres::PgLease),
}

impl Lease {
    /// The descriptor that holds the lease, when it is one: a run that
    /// inherits it keeps the lease for as long as any of its processes lives.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Lease::Files(lease) => Some(lease.fd()),
            Lease::Postgres(_) => None,
        }
    }

    /// The fencing token of this holding (`WEBJOBS_FENCE`): greater than
    /// any earlier holder's.
    /// The lease's name in a database (none for a lock file).
    pub fn name(&self) -> Option<&str> {
        match self {
            Lease::Files(_) => None,
            Lease::Postgres(lease) => Some(lease.name()),
        }
    }

    pub fn fence(&self) -> Option<i64> {
        match self {
            Lease::Files(_) => None,
            Lease::Postgres(lease) => Some(lease.fence()),
        }
    }

    /// A future that completes when the lease can no longer be trusted: a
    /// database session not renewed in time, or a lock file that can no
    /// longer be written (on NFS, a revoked lock); [`Lease::why_lost`] says
    /// why. It borrows nothing: made once, polled across a run's life.
    pub fn watch_lost(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        match self {
            Lease::Files(lease) => Box::pin(lease.watch_lost()),
            Lease::Postgres(lease) => Box::pin(lease.watch_lost()),
        }
    }

    pub fn why_lost(&self) -> String {
        match self {
            Lease::Files(_) => {
                "the lock file can no longer be written (on NFS: the server revoked the lock, or does not answer)"
                    .into()
            }
            Lease::Postgres(lease) => lease.why_lost(),
        }
    }
}

/// Completes when the lease watched (if any) is lost.
pub async fn lost(watch: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>>) {
    match watch {
        Some(watch) => watch.await,
        None => std::future::pending().await,
    }
}

/// What taking a shared queue's head came to.
#[derive(Debug)]
pub enum Next {
    /// A request, and the run lock it runs under; `true` when it took the
    /// last free one (the next try would find every slot held).
    Got(Box<(Lease, Taken)>, bool),
    /// Every run slot is held.
    Busy,
    /// Nothing is due.
    Empty,
}

/// This daemon's registration, held for its whole life.
#[derive(Debug)]
pub enum Registration {
    Files(Lease),
    /// The local instance lock, and the task that keeps the database session.
    Postgres(Lease, tokio::task::JoinHandle<()>),
}

/// The coordination of one triggered job (kept by its actor, so that a run or
/// a tick costs no setup).
#[derive(Debug)]
pub enum JobCoordination {
    Files(files::JobFiles),
    /// Boxed: an idle actor of the files backend keeps only a path.
    Postgres(Box<postgres::JobPg>),
}

impl Coordinator {
    /// Lock files in the data folder.
    pub fn for_data(data_dir: &Path) -> Coordinator {
        Coordinator::Files(files::Files::new(data_dir))
    }

    /// The backend the configuration names: PostgreSQL (connected, its
    /// schema migrated) or lock files in the data folder.
    pub async fn open(data_dir: &Path, pg: Option<&postgres::PgSettings>) -> Result<Coordinator, postgres::PgError> {
        let files = files::Files::new(data_dir);
        match pg {
            None => Ok(Coordinator::Files(files)),
            Some(settings) => Ok(Coordinator::Postgres(files, postgres::Postgres::open(settings, data_dir).await?)),
        }
    }

    fn local(&self) -> &files::Files {
        match self {
            Coordinator::Files(f) | Coordinator::Postgres(f, _) => f,
        }
    }

    /// Registers this daemon as instance `id`; refused while a live daemon
    /// holds it. A daemon killed a moment ago may still hold it for a few
    /// milliseconds (through a child it was starting, until that child's
    /// exec), so a held registration is tried again for up to a second.
    pub async fn register(&self, id: &str) -> Result<Registration, InstanceError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        let local = loop {
            match self.local().register(id) {
                Err(InstanceError::InUse { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        };
        match self {
            Coordinator::Files(_) => Ok(Registration::Files(local)),
            Coordinator::Postgres(_, pg) => {
                pg.register(id, None).await.map_err(|why| InstanceError::Database { id: id.to_string(), why })?;
                let keeper = tokio::spawn(pg.clone().keep(id.to_string(), None));
                Ok(Registration::Postgres(local, keeper))
            }
        }
    }

    /// Ends this daemon's registration (a graceful stop): what it held is
    /// free for the others at once.
    pub async fn deregister(&self, registration: Registration) {
        if let (Coordinator::Postgres(_, pg), Registration::Postgres(_, keeper)) = (self, &registration) {
            keeper.abort();
            pg.deregister().await;
        }
        drop(registration);
    }

    /// What the database backend's beats tell (none for lock files).
    pub fn beats(&self) -> Option<tokio::sync::watch::Receiver<postgres::Beat>> {
        match self {
            Coordinator::Files(_) => None,
            Coordinator::Postgres(_, pg) => Some(pg.beat_state()),
        }
    }

    /// Whether a daemon registered as `id` is alive.
    pub async fn instance_alive(&self, id: &str) -> bool {
        match self {
            Coordinator::Files(f) => f.instance_alive(id),
            Coordinator::Postgres(_, pg) => pg.alive(id),
        }
    }

    /// Takes the singleton lease of a continuous job if no one holds it
    /// (never waits). `instance` is recorded as the holder; `grace` is how
    /// long after this daemon is gone the lease stays its (the job's stop
    /// time and a second: a database backend only).
    pub async fn try_singleton(
        &self,
        key: &JobKey,
        instance: &str,
        grace: std::time::Duration,
    ) -> io::Result<Option<Lease>> {
        match self {
            Coordinator::Files(f) => Ok(f.try_singleton(key, instance)?.map(Lease::Files)),
            Coordinator::Postgres(_, pg) => {
                let name = format!("singleton:{}", postgres::job_name(key));
                Ok(pg.try_lease(&name, instance, grace).await?.map(Lease::Postgres))
            }
        }
    }

    /// Waits until a job's singleton lease may be free (at most `max`): a
    /// database backend says so after a beat, lock files are tried again.
    pub async fn singleton_free(&self, key: &JobKey, max: std::time::Duration) {
        match self {
            Coordinator::Files(_) => tokio::time::sleep(max).await,
            Coordinator::Postgres(_, pg) => pg.lease_free(&format!("singleton:{}", postgres::job_name(key)), max).await,
        }
    }

    /// Who holds a job's singleton lease, in words ("instance a1 (pid 42)").
    pub async fn singleton_holder(&self, key: &JobKey) -> Option<String> {
        match self {
            Coordinator::Files(f) => f.singleton_holder(key),
            Coordinator::Postgres(_, pg) => pg.lease_holder(&format!("singleton:{}", postgres::job_name(key))).await,
        }
    }

    /// The coordination of one triggered job.
    pub async fn job(&self, key: &JobKey) -> io::Result<JobCoordination> {
        match self {
            Coordinator::Files(f) => f.job(key).map(JobCoordination::Files),
            Coordinator::Postgres(_, pg) => Ok(JobCoordination::Postgres(Box::new(pg.job(key)))),
        }
    }

    /// The instances registered (alive or not) on the shared state.
    pub async fn instances(&self) -> Vec<String> {
        match self {
            Coordinator::Files(f) => f.instances(),
            Coordinator::Postgres(_, pg) => pg.instances(),
        }
    }

    /// Tells the other daemons where this one's API is.
    pub async fn advertise(&self, api: &str) {
        if let Coordinator::Postgres(_, pg) = self {
            pg.advertise(api).await;
        }
    }

    /// The database, when daemons share one.
    pub fn postgres(&self) -> Option<&postgres::Postgres> {
        match self {
            Coordinator::Files(_) => None,
            Coordinator::Postgres(_, pg) => Some(pg),
        }
    }

    /// Where the backend keeps its state, for messages.
    pub fn describe(&self) -> String {
        match self {
            Coordinator::Files(f) => format!("lock files in {}", f.data_dir().display()),
            Coordinator::Postgres(_, pg) => pg.describe(),
        }
    }
}

impl JobCoordination {
    /// Takes one of the job's `slots` run locks (at most `slots` active runs
    /// across all daemons) if one is free, never waiting. `instance` is
    /// recorded as the holder.
    /// `busy`: the run locks this daemon's active runs of the job hold.
    pub async fn try_run(
        &self,
        instance: &str,
        slots: u32,
        grace: std::time::Duration,
        busy: &[String],
    ) -> io::Result<Option<Lease>> {
        match self {
            JobCoordination::Files(f) => Ok(f.try_run(instance, slots)?.map(Lease::Files)),
            JobCoordination::Postgres(p) => Ok(p.try_run(instance, slots, grace, busy).await?.map(Lease::Postgres)),
        }
    }

    /// Whether daemons share the queue (a database): the head is taken with
    /// [`JobCoordination::take_next`], not from this daemon's index.
    pub fn shared_queue(&self) -> bool {
        matches!(self, JobCoordination::Postgres(_))
    }

    /// Takes the due head of a shared queue with one of the job's `slots`
    /// run locks, both or neither, skipping what other daemons are taking
    /// at this moment. `None` for a queue that is not shared.
    pub async fn take_next(
        &self,
        instance: &str,
        slots: u32,
        grace: std::time::Duration,
        busy: &[String],
    ) -> io::Result<Option<Next>> {
        match self {
            JobCoordination::Files(_) => Ok(None),
            JobCoordination::Postgres(p) => Ok(Some(match p.take_leased(instance, slots, grace, busy).await? {
                postgres::Leased::Got(got, last) => {
                    let (lease, taken) = *got;
                    Next::Got(Box::new((Lease::Postgres(lease), taken)), last)
                }
                postgres::Leased::Busy => Next::Busy,
                postgres::Leased::Empty => Next::Empty,
            })),
        }
    }

    /// Who holds the run lock, in words.
    pub async fn run_holder(&self) -> Option<String> {
        match self {
            JobCoordination::Files(f) => f.run_holder(),
            JobCoordination::Postgres(p) => p.run_holder().await,
        }
    }

    /// Whether a tick is claimed with its request, in one transaction, by
    /// [`JobCoordination::enqueue`] of an entry with `tick_ms` (a database),
    /// rather than by [`JobCoordination::claim_tick`] first: a daemon that
    /// dies between the two never loses a tick.
    pub fn claims_tick_on_enqueue(&self) -> bool {
        matches!(self, JobCoordination::Postgres(_))
    }

    /// Claims schedule tick `tick`: true for exactly one caller across all
    /// daemons, and false for any tick not after the newest claimed one.
    pub async fn claim_tick(&self, tick: jiff::Timestamp) -> io::Result<bool> {
        match self {
            JobCoordination::Files(f) => f.claim_tick(tick),
            JobCoordination::Postgres(p) => p.claim_tick(tick).await,
        }
    }

    /// The newest tick any daemon claimed.
    pub async fn last_tick(&self) -> Option<jiff::Timestamp> {
        match self {
            JobCoordination::Files(f) => f.last_tick(),
            JobCoordination::Postgres(p) => p.last_tick().await,
        }
    }

    /// Stores a request (and its payload) in the job's queue; refused when
    /// its dedup key is held.
    pub async fn enqueue(&self, entry: &Entry, payload: Option<&[u8]>) -> io::Result<Result<(), Unstored>> {
        match self {
            JobCoordination::Files(f) => f.enqueue(entry, payload),
            JobCoordination::Postgres(p) => p.enqueue(entry, payload).await,
        }
    }

    /// Every queued request.
    pub async fn scan(&self) -> io::Result<Vec<Slot>> {
        match self {
            JobCoordination::Files(f) => f.scan(),
            JobCoordination::Postgres(p) => p.scan().await,
        }
    }

    /// Takes a queued request: `None` when another daemon took it first.
    pub async fn take(&self, slot: &Slot, instance: &str, grace: std::time::Duration) -> io::Result<Option<Taken>> {
        match self {
            JobCoordination::Files(f) => f.take(slot, instance),
            JobCoordination::Postgres(p) => p.take(Some(slot), grace).await,
        }
    }

    /// Records a run in the cluster's history (a database; the lock-file
    /// backend's history is each daemon's run folders).
    pub async fn record_run(
        &self,
        id: &str,
        instance: &str,
        status: &crate::history::RunStatus,
        output_tail: Option<&str>,
        keep: u32,
    ) -> io::Result<()> {
        match self {
            JobCoordination::Files(_) => Ok(()),
            JobCoordination::Postgres(p) => p.record_run(id, instance, status, output_tail, keep, false).await,
        }
    }

    /// [`JobCoordination::record_run`] without waiting for it (a run's
    /// start is never recorded over its end), tried again for a while when
    /// the database does not answer.
    pub fn record_later(
        &self,
        id: &str,
        instance: &str,
        status: &crate::history::RunStatus,
        output_tail: Option<String>,
        keep: u32,
    ) {
        if let JobCoordination::Postgres(p) = self {
            let (p, id, instance, status) = (p.clone(), id.to_string(), instance.to_string(), status.clone());
            tokio::spawn(async move {
                let record = || p.record_run(&id, &instance, &status, output_tail.as_deref(), keep, true);
                if let Err(e) = retried(record).await {
                    tracing::warn!(run = %id, error = %e, "the run is missing from the cluster's history");
                }
            });
        }
    }

    /// [`JobCoordination::done`] without waiting for it (a database), tried
    /// again for a while when the database does not answer. `false`: not a
    /// database; call `done`.
    pub fn done_later(&self, taken: &Taken, window: std::time::Duration) -> bool {
        let JobCoordination::Postgres(p) = self else { return false };
        let (p, taken) = (p.clone(), taken.clone());
        tokio::spawn(async move {
            let id = taken.entry.id.clone();
            if let Err(e) = retried(|| p.done(taken.clone(), window, true)).await {
                tracing::error!(request = %id, error = %e, "cannot put away a request that is done; it runs again once this daemon is gone");
            }
        });
        true
    }

    /// A run whose daemon is gone is recorded Aborted in the cluster's history.
    pub async fn abort_run(&self, id: &str, why: &str) -> io::Result<()> {
        match self {
            JobCoordination::Files(_) => Ok(()),
            JobCoordination::Postgres(p) => p.abort_run(id, why).await,
        }
    }

    /// Whether runs are recorded in a shared history.
    pub fn shared_history(&self) -> bool {
        matches!(self, JobCoordination::Postgres(_))
    }

    /// Where the payload of request `id` can be read by its run.
    pub fn payload_path(&self, id: &str) -> std::path::PathBuf {
        match self {
            JobCoordination::Files(f) => f.payload_path(id),
            JobCoordination::Postgres(p) => p.payload_path(id),
        }
    }

    /// A taken request is done; its dedup key stays held for `window`.
    pub async fn done(&self, taken: Taken, window: std::time::Duration) -> io::Result<()> {
        match self {
            JobCoordination::Files(f) => f.done(taken, window),
            JobCoordination::Postgres(p) => p.done(taken, window, false).await,
        }
    }

    /// A taken request goes back in the queue (a retry: `entry` says when).
    pub async fn requeue(&self, taken: Taken, entry: &Entry) -> io::Result<Slot> {
        match self {
            JobCoordination::Files(f) => f.requeue(taken, entry),
            JobCoordination::Postgres(p) => p.requeue(taken, entry).await,
        }
    }

    /// A taken request with no attempt left is set aside as dead; the
    /// newest `keep` dead requests are kept.
    pub async fn bury(&self, taken: Taken, entry: &Entry, keep: usize) -> io::Result<()> {
        match self {
            JobCoordination::Files(f) => f.bury(taken, entry, keep),
            JobCoordination::Postgres(p) => p.bury(taken, entry, keep).await,
        }
    }

    /// Whether request `id` is queued, taken or dead.
    pub async fn known(&self, id: &str) -> bool {
        match self {
            JobCoordination::Files(f) => f.known(id),
            JobCoordination::Postgres(p) => p.known(id).await,
        }
    }

    /// Dead requests, newest first.
    pub async fn dead(&self) -> Vec<Entry> {
        match self {
            JobCoordination::Files(f) => f.dead(),
            JobCoordination::Postgres(p) => p.dead().await,
        }
    }

    /// Queues a dead request again (found by its id or one of its runs' ids).
    pub async fn revive(&self, id: &str) -> io::Result<Option<Entry>> {
        match self {
            JobCoordination::Files(f) => f.revive(id),
            JobCoordination::Postgres(p) => p.revive(id).await,
        }
    }

    /// Removes a queued request (not yet started).
    pub async fn remove_queued(&self, id: &str) -> io::Result<Option<Entry>> {
        match self {
            JobCoordination::Files(f) => f.remove_queued(id),
            JobCoordination::Postgres(p) => p.remove_queued(id).await,
        }
    }

    /// The queued requests in queue order, at most `limit` (with `id`, only that one).
    pub async fn queued(&self, limit: usize, id: Option<&str>) -> Vec<Entry> {
        match self {
            JobCoordination::Files(f) => f.queued(limit, id),
            JobCoordination::Postgres(p) => p.queued(limit, id).await,
        }
    }

    /// The requests taken by daemons that are gone (per `coordinator`), now
    /// taken by `instance` for recovery: each is found by exactly one daemon.
    /// With `own`, this instance's are included (its previous life's, at start).
    pub async fn orphans(&self, coordinator: &Coordinator, instance: &str, own: bool) -> io::Result<Vec<Taken>> {
        match self {
            JobCoordination::Files(f) => {
                let mut found = Vec::new();
                for who in f.takers() {
                    let gone = if who == instance { own } else { !coordinator.instance_alive(&who).await };
                    if !gone {
                        continue;
                    }
                    for taken in f.taken_by(&who) {
                        if who == instance {
                            found.push(taken);
                        } else if let Some(mine) = f.adopt(taken, instance)? {
                            found.push(mine);
                        }
                    }
                }
                Ok(found)
            }
            // Sessions that are gone, whoever they were (this instance's
            // previous life included, once its grace is over).
            JobCoordination::Postgres(p) => p.orphans().await,
        }
    }
}

/// `op` until it succeeds, ten times a second apart at most.
async fn retried<F, Fut>(op: F) -> io::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = io::Result<()>>,
{
    let mut last = Ok(());
    for attempt in 0..10 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        last = op().await;
        if last.is_ok() {
            return last;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    //! The contract, as any backend must keep it.
    use super::*;
    use crate::key::JobKind;

    const G: std::time::Duration = std::time::Duration::from_secs(1);

    fn backends(d: &Path) -> Vec<(Coordinator, Coordinator)> {
        vec![(Coordinator::for_data(d), Coordinator::for_data(d))]
    }

    #[tokio::test]
    async fn a_singleton_lease_is_held_once_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let key = JobKey::new(JobKind::Continuous, "j");
        for (a, b) in backends(d.path()) {
            let first = a.try_singleton(&key, "one", G).await.unwrap();
            assert!(first.is_some());
            assert!(b.try_singleton(&key, "two", G).await.unwrap().is_none());
            assert_eq!(b.singleton_holder(&key).await.unwrap(), format!("instance one (pid {})", std::process::id()));
            drop(first);
            assert!(b.try_singleton(&key, "two", G).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_tick_is_claimed_once_and_never_before_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let key = JobKey::new(JobKind::Triggered, "t");
        for (a, b) in backends(d.path()) {
            let (a, b) = (a.job(&key).await.unwrap(), b.job(&key).await.unwrap());
            let t: jiff::Timestamp = "2026-11-21T09:30:00Z".parse().unwrap();
            assert!(a.claim_tick(t).await.unwrap());
            assert!(!b.claim_tick(t).await.unwrap());
            assert!(!a.claim_tick("2026-11-21T09:29:00Z".parse().unwrap()).await.unwrap());
            assert_eq!(b.last_tick().await, Some(t));
            assert!(b.claim_tick("2026-11-21T09:30:00.5Z".parse().unwrap()).await.unwrap());
        }
    }

    #[tokio::test]
    async fn the_run_lock_is_held_once_across_daemons() {
        let d = tempfile::tempdir().unwrap();
        let key = JobKey::new(JobKind::Triggered, "t");
        for (a, b) in backends(d.path()) {
            let (a, b) = (a.job(&key).await.unwrap(), b.job(&key).await.unwrap());
            let lease = a.try_run("one", 1, G, &[]).await.unwrap().unwrap();
            assert!(b.try_run("two", 1, G, &[]).await.unwrap().is_none());
            assert!(b.run_holder().await.unwrap().starts_with("instance one"));
            let second = b.try_run("two", 2, G, &[]).await.unwrap();
            assert!(second.is_some(), "a second slot with max_parallel 2");
            assert!(a.try_run("one", 2, G, &[]).await.unwrap().is_none(), "both slots held");
            drop(lease);
            assert!(b.try_run("two", 1, G, &[]).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn an_instance_id_is_registered_once() {
        let d = tempfile::tempdir().unwrap();
        for (a, b) in backends(d.path()) {
            let guard = a.register("i1").await.unwrap();
            assert!(b.instance_alive("i1").await);
            let err = b.register("i1").await.unwrap_err().to_string();
            assert!(err.contains("already serving") && err.contains("run twice"), "{err}");
            drop(guard);
            assert!(!b.instance_alive("i1").await);
        }
    }
}
