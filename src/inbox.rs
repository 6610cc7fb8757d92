//! File-arrival triggers: a triggered job with `"trigger": {"inbox": DIR,
//! "pattern": "*.csv"}` runs once per file that lands in DIR.
//!
//! ```text
//! DIR/<name>                          arrived (complete: closed after writing, or renamed in)
//! DIR/.processing/<request>.<name>    claimed by one daemon (rename), its request queued
//! DIR/processed/<name>                its request done
//! DIR/failed/<name>                   its request dead (every attempt failed)
//! ```
//!
//! A file is claimed by renaming it into `.processing/` (one daemon wins),
//! then its request is queued; a daemon that dies between the two leaves a
//! claimed file that no request knows, which the next look at the inbox
//! queues. One inotify watch per inbox (a single watcher for the daemon)
//! tells a job at once; a scan every `scan_interval` (default 5 s) catches
//! what inotify cannot see (NFS, a queue overflow), taking only files
//! unchanged for [`SETTLE`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Where claimed files wait for their run's end.
pub const PROCESSING: &str = ".processing";
/// Where a file goes once its request is done.
pub const PROCESSED: &str = "processed";
/// Where a file goes once its request is dead.
pub const FAILED: &str = "failed";

/// A file found by a scan (not announced by inotify) is taken once it has
/// not changed for this long: a writer that pauses longer than this is not
/// told apart from one that is done.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Whether `name` may be a trigger file: not hidden, not a temporary name
/// (`*.tmp`, `*.part`, `*.partial`, `*.crdownload`, `*.swp`, `*~`), and
/// matching `pattern` (`*` any run of characters, `?` one character).
pub fn wanted(name: &str, pattern: &str) -> bool {
    let temporary = [".tmp", ".part", ".partial", ".crdownload", ".swp", "~"];
    !name.starts_with('.') && !temporary.iter().any(|t| name.ends_with(t)) && glob(pattern.as_bytes(), name.as_bytes())
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

/// Claims `name` in `inbox` for request `id`: renamed into `.processing/`.
/// `None` when it is gone (another daemon claimed it).
pub fn claim(inbox: &Path, name: &str, id: &str) -> io::Result<Option<PathBuf>> {
    let to = inbox.join(PROCESSING).join(format!("{id}.{name}"));
    Ok(crate::queue::take_by_rename(&inbox.join(name), &to)?.then_some(to))
}

/// Moves a claimed file to `processed/` or `failed/` under its own name
/// (`<name>.<request>` when that name is taken). When it cannot be moved
/// there, it is hidden in `.processing/` so that it is never run again, and
/// the error says why.
pub fn put_away(claimed: &Path, done: bool) -> io::Result<PathBuf> {
    let processing = claimed.parent().unwrap_or(Path::new("."));
    let inbox = processing.parent().unwrap_or(Path::new("."));
    let file = claimed.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let (id, name) = file.split_once('.').unwrap_or(("", file));
    let dir = inbox.join(if done { PROCESSED } else { FAILED });
    let attempt = || -> io::Result<PathBuf> {
        std::fs::create_dir_all(&dir)?;
        let mut to = dir.join(name);
        if to.exists() {
            to = dir.join(format!("{name}.{id}"));
        }
        std::fs::rename(claimed, &to)?;
        Ok(to)
    };
    attempt().inspect_err(|_| {
        let _ = std::fs::rename(claimed, processing.join(format!(".{file}.stuck")));
    })
}

/// The files of an inbox that may be claimed now: matching, and either
/// announced complete (`announced`) or unchanged for [`SETTLE`].
pub fn ready(inbox: &Path, pattern: &str, now: SystemTime) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(inbox)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if !wanted(&name, pattern) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let settled = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age >= SETTLE);
        if meta.is_file() && settled {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Claimed files with their request ids (`.processing/<id>.<name>`).
pub fn claimed(inbox: &Path) -> Vec<(String, PathBuf)> {
    let entries = std::fs::read_dir(inbox.join(PROCESSING)).into_iter().flatten().flatten();
    entries
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (id, _) = name.split_once('.')?;
            (!name.starts_with('.')).then(|| (id.to_string(), e.path()))
        })
        .collect()
}

/// What the inbox watcher tells a job: a file announced complete, or "look
/// at everything" (events were lost).
#[derive(Debug, Clone)]
pub enum Arrival {
    File(String),
    Rescan,
}

/// One inotify watcher for every inbox of the daemon.
pub struct Inboxes {
    watcher: Mutex<Option<RecommendedWatcher>>,
    jobs: Arc<Mutex<HashMap<PathBuf, Vec<String>>>>,
}

impl std::fmt::Debug for Inboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inboxes")
    }
}

impl Inboxes {
    /// Arrivals are sent as (job, arrival) to `tell`.
    pub fn new(tell: mpsc::UnboundedSender<(String, Arrival)>) -> Inboxes {
        let jobs: Arc<Mutex<HashMap<PathBuf, Vec<String>>>> = Arc::default();
        let map = jobs.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let jobs = map.lock().unwrap_or_else(|e| e.into_inner());
            if event.need_rescan() {
                for job in jobs.values().flatten() {
                    let _ = tell.send((job.clone(), Arrival::Rescan));
                }
                return;
            }
            // Complete: closed after writing, or renamed (moved) in.
            let complete = matches!(
                event.kind,
                EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write))
                    | EventKind::Modify(notify::event::ModifyKind::Name(
                        notify::event::RenameMode::To | notify::event::RenameMode::Both
                    ))
            );
            if !complete {
                return;
            }
            for path in &event.paths {
                let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
                    continue;
                };
                for job in jobs.get(dir).into_iter().flatten() {
                    let _ = tell.send((job.clone(), Arrival::File(name.to_string())));
                }
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch inboxes; they are scanned only"))
        .ok();
        Inboxes { watcher: Mutex::new(watcher), jobs }
    }

    /// Watches `dir` for `job` (creating it); an error is the job's to tell.
    pub fn watch(&self, job: &str, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let list = jobs.entry(dir.to_path_buf()).or_default();
        if !list.iter().any(|j| j == job) {
            list.push(job.to_string());
        }
        if list.len() == 1
            && let Some(w) = self.watcher.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
        {
            w.watch(dir, RecursiveMode::NonRecursive).map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    /// Stops watching `dir` for `job`.
    pub fn unwatch(&self, job: &str, dir: &Path) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = jobs.get_mut(dir) {
            list.retain(|j| j != job);
            if list.is_empty() {
                jobs.remove(dir);
                if let Some(w) = self.watcher.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    let _ = w.unwatch(dir);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_temporary_names() {
        assert!(wanted("a.csv", "*.csv"));
        assert!(wanted("report-2026.csv", "report-????.csv"));
        assert!(!wanted("a.csv.tmp", "*"));
        assert!(!wanted(".a.csv", "*.csv"));
        assert!(!wanted("a.txt", "*.csv"));
        assert!(!wanted("a.csv~", "*"));
        assert!(wanted("anything", "*"));
    }

    #[test]
    fn a_file_is_claimed_once_and_put_away_by_outcome() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.csv"), "1").unwrap();
        let claimed = claim(d.path(), "x.csv", "r1").unwrap().unwrap();
        assert!(claim(d.path(), "x.csv", "r2").unwrap().is_none(), "once");
        assert_eq!(super::claimed(d.path()), vec![("r1".to_string(), claimed.clone())]);
        let to = put_away(&claimed, true).unwrap();
        assert_eq!(to, d.path().join("processed/x.csv"));
        std::fs::write(d.path().join("x.csv"), "2").unwrap();
        let again = claim(d.path(), "x.csv", "r3").unwrap().unwrap();
        assert_eq!(put_away(&again, true).unwrap(), d.path().join("processed/x.csv.r3"), "never overwritten");
    }

    #[test]
    fn a_scan_takes_only_settled_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("new.csv"), "1").unwrap();
        let now = SystemTime::now();
        assert!(ready(d.path(), "*.csv", now).unwrap().is_empty(), "just written");
        assert_eq!(ready(d.path(), "*.csv", now + SETTLE).unwrap(), ["new.csv"]);
    }
}
