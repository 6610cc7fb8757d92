//! Coordination between daemons that share a data folder.
//!
//! Locks are kernel-released file locks (`flock`) under `data/`: a daemon that
//! dies, however it dies, releases them, so no stale-file heuristics exist.
//! The [`Coordinator`] enum is the seam where a PostgreSQL backend (advisory
//! locks, for machines without a shared disk) will slot in beside the files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use crate::layout;

/// How this daemon coordinates with the others.
#[derive(Debug, Clone)]
pub enum Coordinator {
    /// Lock files in the shared data folder.
    Files { data_dir: PathBuf },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub enum Lease {
    /// A lock file opened for this lease.
    Owned { _lock: Flock<File> },
    /// A lock on a file kept open by its owner.
    Shared(Arc<File>),
}

impl Lease {
    /// The descriptor that holds the lock (for a run to inherit).
    pub fn fd(&self) -> std::os::fd::RawFd {
        match self {
            Lease::Owned { _lock } => _lock.as_raw_fd(),
            Lease::Shared(file) => file.as_raw_fd(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Lease::Shared(file) = self {
            // SAFETY: flock on an open descriptor.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

/// Size of a holder record or a schedule record: rewritten in place, padded,
/// so no truncation (and no new file) is ever needed.
const RECORD: usize = 128;

/// The coordination files of one triggered job, kept open.
#[derive(Debug)]
pub struct JobLocks {
    run_lock: Arc<File>,
    schedule: File,
}

impl JobLocks {
    /// Takes the job's run lock (at most one active run across all daemons),
    /// without waiting, and records the holder.
    pub fn try_run(&self, instance: &str) -> io::Result<Option<Lease>> {
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(self.run_lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
        }
        let lease = Lease::Shared(self.run_lock.clone());
        let holder = serde_json::json!({"InstanceId": instance, "Pid": std::process::id()});
        self.run_lock.write_all_at(&padded(&holder.to_string()), 0)?;
        Ok(Some(lease))
    }

    /// Who holds the run lock, as the holder wrote it.
    pub fn run_holder(&self) -> Option<String> {
        holder_text(&read_record(&self.run_lock)?)
    }

    /// Claims schedule tick `tick`: true exactly once across all daemons
    /// sharing the data folder (read and written under a lock).
    pub fn claim_tick(&self, tick: jiff::Timestamp) -> io::Result<bool> {
        let fd = self.schedule.as_raw_fd();
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            if read_record(&self.schedule).and_then(|t| parse_tick(&t)).is_some_and(|last| last >= tick) {
                return Ok(false);
            }
            let record = serde_json::json!({"LastTick": tick.to_string()}).to_string();
            self.schedule.write_all_at(&padded(&record), 0)?;
            Ok(true)
        })();
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        result
    }
}

fn padded(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(RECORD.max(bytes.len() + 1) - 1, b' ');
    bytes.push(b'\n');
    bytes
}

fn read_record(file: &File) -> Option<String> {
    let mut buf = vec![0u8; RECORD * 2];
    let n = file.read_at(&mut buf, 0).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

fn parse_tick(text: &str) -> Option<jiff::Timestamp> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v["LastTick"].as_str()?.parse().ok()
}

fn holder_text(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    Some(format!("instance {} (pid {})", v["InstanceId"].as_str()?, v["Pid"]))
}

/// The daemon could not register its instance.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "a webjobs daemon is already serving data folder {data} as instance `{id}` ({holder}); \
         stop it first (`systemctl stop webjobs`, or end that pid). Do not start a second daemon with another \
         instance_id to get around this: every daemon on a data folder runs every non-singleton continuous job, \
         so each would run twice (see \"Several daemons, one job set\" in the README)"
    )]
    InUse { id: String, holder: String, data: PathBuf },
    #[error("cannot use the instance lock {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
}

impl Coordinator {
    /// Tries to take the singleton lock of a continuous job, without waiting.
    pub fn try_singleton(&self, job_data_dir: &Path, instance: &str) -> io::Result<Option<Lease>> {
        match self {
            Coordinator::Files { .. } => try_lock_file(&job_data_dir.join(layout::SINGLETON_LOCK), instance),
        }
    }

    /// Opens the per-job files a triggered job coordinates through, once; the
    /// actor keeps them open so a run or a tick costs no file creation.
    pub fn job_locks(&self, job_data_dir: &Path) -> io::Result<JobLocks> {
        match self {
            Coordinator::Files { .. } => Ok(JobLocks {
                run_lock: Arc::new(open_lock(&job_data_dir.join(layout::RUN_LOCK))?),
                schedule: open_lock(&job_data_dir.join(layout::SCHEDULE_RECORD))?,
            }),
        }
    }

    /// Who holds a job's singleton lock, as written by the holder.
    pub fn singleton_holder(&self, job_data_dir: &Path) -> Option<String> {
        match self {
            Coordinator::Files { .. } => holder_of(&job_data_dir.join(layout::SINGLETON_LOCK)),
        }
    }
}

/// The last schedule tick any daemon claimed for a job.
pub fn last_tick(job_data_dir: &Path) -> Option<jiff::Timestamp> {
    parse_tick(std::fs::read_to_string(job_data_dir.join(layout::SCHEDULE_RECORD)).ok()?.trim())
}

fn open_lock(path: &Path) -> io::Result<File> {
    let open = || OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path);
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
            open()
        }
        other => other,
    }
}

/// Takes an exclusive lock on `path` if free, and writes who holds it.
fn try_lock_file(path: &Path, instance: &str) -> io::Result<Option<Lease>> {
    let file = open_lock(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let holder = serde_json::json!({"InstanceId": instance, "Pid": std::process::id()});
            lock.write_all_at(&padded(&holder.to_string()), 0)?;
            Ok(Some(Lease::Owned { _lock: lock }))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

fn holder_pid(path: &Path) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(std::fs::read_to_string(path).ok()?.trim()).ok()?;
    v["Pid"].as_u64()
}

fn holder_of(path: &Path) -> Option<String> {
    holder_text(&std::fs::read_to_string(path).ok()?)
}

/// This daemon's registration in `data/instances/`: held for its whole life.
#[derive(Debug)]
pub struct InstanceGuard {
    _lease: Lease,
}

fn instance_lock_path(data_dir: &Path, id: &str) -> PathBuf {
    layout::instance_lock(data_dir, id)
}

/// Registers instance `id`; refuses when a live daemon already uses it.
pub fn register_instance(data_dir: &Path, id: &str) -> Result<InstanceGuard, InstanceError> {
    let path = instance_lock_path(data_dir, id);
    let io_err = |cause| InstanceError::Io { path: path.clone(), cause };
    match try_lock_file(&path, id).map_err(io_err)? {
        Some(lease) => Ok(InstanceGuard { _lease: lease }),
        None => Err(InstanceError::InUse {
            id: id.to_string(),
            holder: holder_pid(&path).map_or_else(|| "pid unknown".into(), |pid| format!("pid {pid}")),
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
    fn a_tick_is_claimed_once_across_daemons() {
        let d = tempfile::tempdir().unwrap();
        let c = Coordinator::Files { data_dir: d.path().into() };
        let (a, b) = (c.job_locks(d.path()).unwrap(), c.job_locks(d.path()).unwrap());
        let t: jiff::Timestamp = "2026-11-21T09:30:00Z".parse().unwrap();
        assert!(a.claim_tick(t).unwrap());
        assert!(!b.claim_tick(t).unwrap());
        assert!(!a.claim_tick("2026-11-21T09:29:00Z".parse().unwrap()).unwrap());
        assert_eq!(last_tick(d.path()), Some(t));
        assert!(b.claim_tick("2026-11-21T09:30:00.5Z".parse().unwrap()).unwrap());
    }

    #[test]
    fn the_run_lock_is_exclusive_across_daemons() {
        let d = tempfile::tempdir().unwrap();
        let c = Coordinator::Files { data_dir: d.path().into() };
        let (a, b) = (c.job_locks(d.path()).unwrap(), c.job_locks(d.path()).unwrap());
        let lease = a.try_run("one").unwrap().unwrap();
        assert!(b.try_run("two").unwrap().is_none());
        assert!(b.run_holder().unwrap().starts_with("instance one"));
        drop(lease);
        assert!(b.try_run("two").unwrap().is_some());
    }

    #[test]
    fn an_instance_id_is_used_once() {
        let d = tempfile::tempdir().unwrap();
        let guard = register_instance(d.path(), "i1").unwrap();
        assert!(instance_alive(d.path(), "i1"));
        let err = register_instance(d.path(), "i1").unwrap_err().to_string();
        assert!(err.contains("already serving") && err.contains("run twice"), "{err}");
        drop(guard);
        assert!(!instance_alive(d.path(), "i1"));
    }
}
