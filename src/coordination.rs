//! Coordination between daemons that share a data folder.
//!
//! Locks are kernel-released file locks (`flock`) under `data/`: a daemon that
//! dies, however it dies, releases them, so no stale-file heuristics exist.
//! The [`Coordinator`] enum is the seam where a PostgreSQL backend (advisory
//! locks, for machines without a shared disk) will slot in beside the files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// How this daemon coordinates with the others.
#[derive(Debug, Clone)]
pub enum Coordinator {
    /// Lock files in the shared data folder.
    Files { data_dir: PathBuf },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Lease {
    _lock: Flock<File>,
}

/// The daemon could not register its instance.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "instance id `{id}` is already in use by a running daemon ({holder}) on data folder {data}; give each daemon its own instance_id (config) or WEBJOBS_INSTANCE_ID"
    )]
    InUse { id: String, holder: String, data: PathBuf },
    #[error("cannot use the instance lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl Coordinator {
    /// Tries to take the singleton lock of a continuous job, without waiting.
    pub fn try_singleton(&self, job_data_dir: &Path, instance: &str) -> io::Result<Option<Lease>> {
        match self {
            Coordinator::Files { .. } => try_lock_file(&job_data_dir.join("singleton.job.lock"), instance),
        }
    }

    /// Tries to take a triggered job's run lock (at most one active run of a
    /// job across all daemons), without waiting.
    pub fn try_run_lock(&self, job_data_dir: &Path, instance: &str) -> io::Result<Option<Lease>> {
        match self {
            Coordinator::Files { .. } => try_lock_file(&job_data_dir.join("triggeredJob.lock"), instance),
        }
    }

    /// Who holds a triggered job's run lock.
    pub fn run_lock_holder(&self, job_data_dir: &Path) -> Option<String> {
        match self {
            Coordinator::Files { .. } => holder_of(&job_data_dir.join("triggeredJob.lock")),
        }
    }

    /// Claims schedule tick `tick` of a job for this daemon: true exactly once
    /// across all daemons sharing the data folder (the last claimed tick is
    /// kept in `schedule.json`, read and written under a lock).
    pub fn claim_tick(&self, job_data_dir: &Path, tick: jiff::Timestamp) -> io::Result<bool> {
        match self {
            Coordinator::Files { .. } => {
                let lock = open_lock(&job_data_dir.join("schedule.lock"))?;
                let _held = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
                if last_tick(job_data_dir).is_some_and(|last| last >= tick) {
                    return Ok(false);
                }
                let text = serde_json::json!({"LastTick": tick.to_string()}).to_string();
                let tmp = job_data_dir.join(".schedule.json.tmp");
                std::fs::write(&tmp, text)?;
                std::fs::rename(tmp, job_data_dir.join("schedule.json"))?;
                Ok(true)
            }
        }
    }

    /// Who holds a job's singleton lock, as written by the holder.
    pub fn singleton_holder(&self, job_data_dir: &Path) -> Option<String> {
        match self {
            Coordinator::Files { .. } => holder_of(&job_data_dir.join("singleton.job.lock")),
        }
    }
}

/// The last schedule tick any daemon claimed for a job.
pub fn last_tick(job_data_dir: &Path) -> Option<jiff::Timestamp> {
    let text = std::fs::read_to_string(job_data_dir.join("schedule.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["LastTick"].as_str()?.parse().ok()
}

fn open_lock(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)
}

/// Takes an exclusive lock on `path` if free, and writes who holds it.
fn try_lock_file(path: &Path, instance: &str) -> io::Result<Option<Lease>> {
    let file = open_lock(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            let holder = serde_json::json!({"InstanceId": instance, "Pid": std::process::id()});
            writeln!(&mut *lock, "{holder}")?;
            Ok(Some(Lease { _lock: lock }))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

fn holder_of(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    Some(format!("instance {} (pid {})", v["InstanceId"].as_str()?, v["Pid"]))
}

/// This daemon's registration in `data/instances/`: held for its whole life.
#[derive(Debug)]
pub struct InstanceGuard {
    _lease: Lease,
}

fn instance_lock_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("instances").join(format!("{id}.lock"))
}

/// Registers instance `id`; refuses when a live daemon already uses it.
pub fn register_instance(data_dir: &Path, id: &str) -> Result<InstanceGuard, InstanceError> {
    let path = instance_lock_path(data_dir, id);
    let io_err = |source| InstanceError::Io { path: path.clone(), source };
    match try_lock_file(&path, id).map_err(io_err)? {
        Some(lease) => Ok(InstanceGuard { _lease: lease }),
        None => Err(InstanceError::InUse {
            id: id.to_string(),
            holder: holder_of(&path).unwrap_or_else(|| "unknown pid".into()),
            data: data_dir.to_path_buf(),
        }),
    }
}

/// Whether a daemon with instance `id` is running on this data folder.
pub fn instance_alive(data_dir: &Path, id: &str) -> bool {
    let Ok(file) = File::open(instance_lock_path(data_dir, id)) else {
        return false;
    };
    Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let c = Coordinator::Files { data_dir: d.path().into() };
        let first = c.try_singleton(d.path(), "one").unwrap();
        assert!(first.is_some());
        assert!(c.try_singleton(d.path(), "two").unwrap().is_none());
        assert_eq!(c.singleton_holder(d.path()).unwrap(), format!("instance one (pid {})", std::process::id()));
        drop(first);
        assert!(c.try_singleton(d.path(), "two").unwrap().is_some());
    }

    #[test]
    fn a_tick_is_claimed_once() {
        let d = tempfile::tempdir().unwrap();
        let c = Coordinator::Files { data_dir: d.path().into() };
        let t: jiff::Timestamp = "2026-11-21T09:30:00Z".parse().unwrap();
        assert!(c.claim_tick(d.path(), t).unwrap());
        assert!(!c.claim_tick(d.path(), t).unwrap());
        assert!(!c.claim_tick(d.path(), "2026-11-21T09:29:00Z".parse().unwrap()).unwrap());
        assert_eq!(last_tick(d.path()), Some(t));
    }

    #[test]
    fn an_instance_id_is_used_once() {
        let d = tempfile::tempdir().unwrap();
        let guard = register_instance(d.path(), "i1").unwrap();
        assert!(instance_alive(d.path(), "i1"));
        let err = register_instance(d.path(), "i1").unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
        drop(guard);
        assert!(!instance_alive(d.path(), "i1"));
    }
}
