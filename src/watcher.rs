//! Watching the jobs folder: inotify events are hints about which jobs may
//! have changed; after a quiet period (debounce) the supervisor rescans just
//! those jobs. Any sign of lost events means a full rescan.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::{Event as FsEvent, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};

use crate::key::{JobKey, JobKind};
use crate::supervisor::{Changes, Event};

/// Hints queued between the watcher thread and the debouncer.
const QUEUE: usize = 4096;
/// A stream of changes that never goes quiet still reloads this often.
const MAX_DELAY_FACTOR: u32 = 10;

/// Why the jobs folder cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "the inotify watch limit is reached while watching {path}; raise it with `sysctl fs.inotify.max_user_watches=524288` (and in /etc/sysctl.d/ to keep it)"
    )]
    TooManyWatches { path: PathBuf },
    #[error(
        "too many inotify instances or open files while watching {path}; raise `sysctl fs.inotify.max_user_instances` or the open-file limit (LimitNOFILE=)"
    )]
    TooManyHandles { path: PathBuf },
    #[error("cannot watch {path}: {cause}")]
    Other { path: PathBuf, cause: notify::Error },
}

impl WatchError {
    fn from_notify(path: &Path, e: notify::Error) -> WatchError {
        let path = path.to_path_buf();
        match &e.kind {
            notify::ErrorKind::MaxFilesWatch => WatchError::TooManyWatches { path },
            notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => WatchError::TooManyWatches { path },
            notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => WatchError::TooManyHandles { path },
            _ => WatchError::Other { path, cause: e },
        }
    }
}

/// Hints from the watcher thread.
enum Hint {
    Job(JobKey),
    Full,
    /// The jobs folder itself was replaced (renamed over, or a link to it
    /// flipped): the watch must move to the new one.
    Replaced,
}

type SharedWatcher = Arc<std::sync::Mutex<Box<dyn Watcher + Send>>>;

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: SharedWatcher,
    _debouncer: tokio::task::JoinHandle<()>,
}

/// Watches `jobs_dir` and sends debounced [`Event::Changed`] to the supervisor.
/// When inotify cannot be used (limits), falls back to polling every 2 s and
/// says so.
pub fn watch(jobs_dir: &Path, debounce: Duration, events: mpsc::Sender<Event>) -> Result<WatchGuard, WatchError> {
    let (tx, rx) = mpsc::channel::<Hint>(QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let handler = {
        let root = jobs_dir.to_path_buf();
        let (overflow, wake) = (overflow.clone(), wake.clone());
        move |result: notify::Result<FsEvent>| {
            let hints = match result {
                Ok(event) => hints_for(&root, &event),
                Err(e) => {
                    tracing::warn!(error = %e, "file watcher error; rescanning all jobs");
                    vec![Hint::Full]
                }
            };
            for hint in hints {
                if tx.try_send(hint).is_err() {
                    overflow.store(true, Ordering::Release);
                    wake.notify_one();
                }
            }
        }
    };
    let mut watcher = start_watcher(jobs_dir, handler)?;
    // The folder holding the jobs folder, for its replacement (`mv jobs.new
    // jobs`, `ln -sfn releases/N/jobs jobs`); best effort.
    if let Some(parent) = jobs_dir.parent()
        && let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive)
    {
        tracing::warn!(error = %e, parent = %parent.display(), "cannot watch the folder holding the jobs folder; replacing the jobs folder will not be noticed");
    }
    let watcher: SharedWatcher = Arc::new(std::sync::Mutex::new(watcher));
    let rewatch = Rewatch { watcher: watcher.clone(), jobs_dir: jobs_dir.to_path_buf() };
    let debouncer = tokio::spawn(debounce_loop(rx, overflow, wake, debounce, events, Some(rewatch)));
    Ok(WatchGuard { _watcher: watcher, _debouncer: debouncer })
}

/// Moves the recursive watch to whatever the jobs folder's path names now.
struct Rewatch {
    watcher: SharedWatcher,
    jobs_dir: std::path::PathBuf,
}

impl Rewatch {
    fn apply(&self) {
        let mut w = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.unwatch(&self.jobs_dir);
        match w.watch(&self.jobs_dir, RecursiveMode::Recursive) {
            Ok(()) => {
                tracing::info!(jobs = %self.jobs_dir.display(), "the jobs folder was replaced; watching the new one and reloading every job")
            }
            Err(e) => {
                tracing::error!(jobs = %self.jobs_dir.display(), error = %e, "the jobs folder was replaced and the new one cannot be watched")
            }
        }
    }
}

fn start_watcher<F>(jobs_dir: &Path, handler: F) -> Result<Box<dyn Watcher + Send>, WatchError>
where
    F: notify::EventHandler + Clone,
{
    let inotify = RecommendedWatcher::new(handler.clone(), notify::Config::default())
        .and_then(|mut w| w.watch(jobs_dir, RecursiveMode::Recursive).map(|()| w));
    match inotify {
        Ok(w) => Ok(Box::new(w)),
        Err(e) => {
            let err = WatchError::from_notify(jobs_dir, e);
            if matches!(err, WatchError::Other { .. }) {
                return Err(err);
            }
            tracing::error!("{err}; falling back to polling the jobs folder every 2s until restarted");
            let config = notify::Config::default().with_poll_interval(Duration::from_secs(2));
            let mut poll =
                notify::PollWatcher::new(handler, config).map_err(|e| WatchError::from_notify(jobs_dir, e))?;
            poll.watch(jobs_dir, RecursiveMode::Recursive).map_err(|e| WatchError::from_notify(jobs_dir, e))?;
            Ok(Box::new(poll))
        }
    }
}

/// Maps a file event to the jobs it may concern.
fn hints_for(root: &Path, event: &FsEvent) -> Vec<Hint> {
    if event.need_rescan() {
        return vec![Hint::Full];
    }
    if matches!(event.kind, EventKind::Access(_)) {
        return Vec::new();
    }
    event.paths.iter().filter_map(|p| hint_for_path(root, p)).collect()
}

fn hint_for_path(root: &Path, path: &Path) -> Option<Hint> {
    if path == root {
        return Some(Hint::Replaced);
    }
    let Ok(rel) = path.strip_prefix(root) else {
        // A sibling of the jobs folder (the parent is watched for its replacement).
        return (path.parent() != root.parent()).then_some(Hint::Full);
    };
    let mut parts = rel.components().filter_map(|c| match c {
        Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
        _ => None,
    });
    let Some(kind) = parts.next() else {
        return Some(Hint::Full);
    };
    let kind = JobKind::parse(&kind)?;
    match parts.next() {
        Some(name) => Some(Hint::Job(JobKey::new(kind, name))),
        None => Some(Hint::Full),
    }
}

/// Collects hints until nothing new arrives for `quiet`, then sends one batch.
/// A stream of events forces a batch after `quiet * MAX_DELAY_FACTOR`; then a
/// job that is still being written (an event within `quiet`) is held back,
/// from a full rescan too, and goes into a later batch once it is quiet: a
/// long copy never starts a half-copied job.
async fn debounce_loop(
    mut rx: mpsc::Receiver<Hint>,
    overflow: Arc<AtomicBool>,
    wake: Arc<Notify>,
    quiet: Duration,
    events: mpsc::Sender<Event>,
    rewatch: Option<Rewatch>,
) {
    let mut carried: std::collections::BTreeMap<JobKey, tokio::time::Instant> = Default::default();
    loop {
        let mut batch = Batch { changes: Changes::default(), replaced: false, seen: std::mem::take(&mut carried) };
        batch.changes.jobs.extend(batch.seen.keys().cloned());
        if batch.seen.is_empty() {
            tokio::select! {
                hint = rx.recv() => match hint {
                    Some(hint) => batch.add(hint),
                    None => return,
                },
                () = wake.notified() => {}
            }
        }
        let latest = tokio::time::Instant::now() + quiet * MAX_DELAY_FACTOR;
        loop {
            let until = (tokio::time::Instant::now() + quiet).min(latest);
            tokio::select! {
                hint = rx.recv() => match hint {
                    Some(hint) => batch.add(hint),
                    None => return,
                },
                () = wake.notified() => {}
                () = tokio::time::sleep_until(until) => break,
            }
        }
        let Batch { mut changes, replaced, seen } = batch;
        let now = tokio::time::Instant::now();
        for (key, at) in seen.into_iter().filter(|(_, at)| now.duration_since(*at) < quiet) {
            changes.jobs.remove(&key);
            changes.settling.insert(key.clone());
            carried.insert(key, at);
        }
        if replaced && let Some(rewatch) = &rewatch {
            rewatch.apply();
        }
        if overflow.swap(false, Ordering::AcqRel) {
            tracing::warn!("file events were lost (queue full); rescanning all jobs");
            changes.full = true;
        }
        if (changes.full || !changes.jobs.is_empty()) && events.send(Event::Changed(changes)).await.is_err() {
            return;
        }
    }
}

/// The hints collected for one batch.
struct Batch {
    changes: Changes,
    replaced: bool,
    /// When each job last had an event.
    seen: std::collections::BTreeMap<JobKey, tokio::time::Instant>,
}

impl Batch {
    fn add(&mut self, hint: Hint) {
        if let Hint::Job(key) = &hint {
            self.seen.insert(key.clone(), tokio::time::Instant::now());
        }
        self.replaced |= add(&mut self.changes, hint);
    }
}

/// Adds a hint to the batch; true when the jobs folder itself was replaced.
fn add(changes: &mut Changes, hint: Hint) -> bool {
    match hint {
        Hint::Job(key) => {
            changes.jobs.insert(key);
        }
        Hint::Full => changes.full = true,
        Hint::Replaced => {
            changes.full = true;
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(path: &str) -> Option<String> {
        hint_for_path(Path::new("/j"), Path::new(path)).map(|h| match h {
            Hint::Job(k) => k.to_string(),
            Hint::Full => "full".into(),
            Hint::Replaced => "replaced".into(),
        })
    }

    #[test]
    fn events_map_to_jobs() {
        assert_eq!(hint("/j/continuous/a/run.sh").as_deref(), Some("continuous/a"));
        assert_eq!(hint("/j/triggered/b/x/y/z.py").as_deref(), Some("triggered/b"));
        assert_eq!(hint("/j/continuous").as_deref(), Some("full"));
        assert_eq!(hint("/j").as_deref(), Some("replaced"), "the jobs folder itself");
        assert_eq!(hint("/sibling"), None, "beside the jobs folder: not ours");
        assert_eq!(hint("/j/other/a"), None);
        assert_eq!(hint("/elsewhere/x").as_deref(), Some("full"));
    }

    #[test]
    fn an_overflow_means_a_full_rescan() {
        let event = FsEvent::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(matches!(hints_for(Path::new("/j"), &event).as_slice(), [Hint::Full]));
        let access =
            FsEvent::new(EventKind::Access(notify::event::AccessKind::Any)).add_path("/j/continuous/a/x".into());
        assert!(hints_for(Path::new("/j"), &access).is_empty(), "reads are not changes");
    }

    #[test]
    fn inotify_limits_name_the_setting_to_raise() {
        let watches = WatchError::from_notify(Path::new("/j"), notify::Error::new(notify::ErrorKind::MaxFilesWatch));
        assert!(watches.to_string().contains("sysctl fs.inotify.max_user_watches="), "{watches}");
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let watches = WatchError::from_notify(Path::new("/j"), notify::Error::io(io));
        assert!(matches!(watches, WatchError::TooManyWatches { .. }));
        let io = std::io::Error::from_raw_os_error(libc::EMFILE);
        let handles = WatchError::from_notify(Path::new("/j"), notify::Error::io(io));
        assert!(handles.to_string().contains("fs.inotify.max_user_instances"), "{handles}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_settles_into_one_batch() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (etx, mut erx) = mpsc::channel(8);
        let overflow = Arc::new(AtomicBool::new(false));
        tokio::spawn(debounce_loop(rx, overflow, Arc::new(Notify::new()), Duration::from_secs(1), etx, None));
        for i in 0..500 {
            tx.send(Hint::Job(JobKey::new(JobKind::Continuous, format!("j{i}")))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let Some(Event::Changed(changes)) = erx.recv().await else { panic!() };
        assert_eq!(changes.jobs.len(), 500);
        assert!(tokio::time::timeout(Duration::from_secs(30), erx.recv()).await.is_err(), "only one batch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_still_being_written_waits_past_the_forced_batch() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (etx, mut erx) = mpsc::channel(8);
        tokio::spawn(debounce_loop(
            rx,
            Arc::new(AtomicBool::new(false)),
            Arc::new(Notify::new()),
            Duration::from_secs(1),
            etx,
            None,
        ));
        let slow = JobKey::new(JobKind::Continuous, "slow");
        let quick = JobKey::new(JobKind::Continuous, "quick");
        tx.send(Hint::Job(quick.clone())).await.unwrap();
        // `slow` gets a file every half second for 30 s: far past the forced batch at 10 s.
        for _ in 0..60 {
            tx.send(Hint::Job(slow.clone())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Some(Event::Changed(first)) = erx.recv().await else { panic!() };
        assert_eq!(first.jobs.iter().collect::<Vec<_>>(), [&quick], "only the quiet job");
        assert!(first.settling.contains(&slow));
        let Some(Event::Changed(later)) = erx.recv().await else { panic!() };
        assert_eq!(later.jobs.iter().collect::<Vec<_>>(), [&slow], "once its copy is over");
        assert!(later.settling.is_empty());
    }
}
