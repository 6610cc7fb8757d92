//! The lock-file backend of [`super::Coordinator`]: kernel-released file locks
//! (`flock`) under the shared data folder (one host, or NFS). A daemon that
//! dies, however it dies, releases them, so no stale-file heuristics exist.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::key::JobKey;
use crate::layout;

/// Lock files in one data folder.
#[derive(Debug, Clone)]
pub struct Files {
    data_dir: PathBuf,
}

/// A held file lock; released when dropped (or when every process holding
/// its open file description is gone).
#[derive(Debug)]
pub struct FileLease {
    lock: Flock<File>,
}

impl FileLease {
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.lock.as_raw_fd()
    }

    /// Completes when the lock file can no longer be written through the
    /// lease's descriptor: on NFS, a lock the server revoked (Linux answers
    /// EIO once it is lost) or a server that does not answer for 10 s; on a
    /// local disk, never. The holder record is rewritten every second (on
    /// a blocking thread: an NFS mount that hangs holds only that one).
    pub fn watch_lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let file = self.lock.try_clone();
        async move {
            let Ok(file) = file else { return std::future::pending().await };
            let file = std::sync::Arc::new(file);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let f = file.clone();
                let write = tokio::task::spawn_blocking(move || {
                    let mut record = [0u8; 1];
                    // The record's first byte, written back as it is.
                    f.read_at(&mut record, 0).and_then(|_| f.write_all_at(&record, 0))
                });
                match tokio::time::timeout(std::time::Duration::from_secs(10), write).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) if lock_lost(&e) => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Whether a write through a lock's descriptor failing with `e` means the
/// lock is gone (NFS: EIO after a lost lock, ESTALE, ENOLCK) rather than a
/// passing trouble (a full disk, an interrupted call).
fn lock_lost(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::ESTALE | libc::ENOLCK | libc::EBADF))
}

/// Size of a holder record or a schedule record: rewritten in place, padded,
/// so no truncation (and no new file) is ever needed.
const RECORD: usize = 128;

/// The coordination files of one triggered job. They are opened when used
/// (a run, a tick), not kept open: ten thousand jobs cost no descriptors.
#[derive(Debug)]
/// Only the job's data folder is kept: the files' paths are made from it when
/// used (ten thousand jobs kept four paths each).
pub struct JobFiles {
    dir: PathBuf,
}

impl JobFiles {
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes one of the job's `slots` run locks (`triggeredJob.lock`, then
    /// `triggeredJob.1.lock` …), the first free one.
    pub fn try_run(&self, instance: &str, slots: u32) -> io::Result<Option<FileLease>> {
        for slot in 0..slots.max(1) {
            let path = layout::run_lock(&self.dir, slot);
            if let Some(lease) = try_lock_file(&path, instance)? {
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    pub fn run_holder(&self) -> Option<String> {
        holder_text(&std::fs::read_to_string(layout::run_lock(&self.dir, 0)).ok()?)
    }

    /// Read and written under an exclusive lock of the schedule record.
    pub fn claim_tick(&self, tick: jiff::Timestamp) -> io::Result<bool> {
        let file = open_lock(&self.dir.join(layout::SCHEDULE_RECORD))?;
        let locked = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        if read_record(&locked).and_then(|t| parse_tick(&t)).is_some_and(|last| last >= tick) {
            return Ok(false);
        }
        let record = serde_json::json!({"LastTick": tick.to_string()}).to_string();
        locked.write_all_at(&padded(&record), 0)?;
        Ok(true)
    }

    pub fn last_tick(&self) -> Option<jiff::Timestamp> {
        parse_tick(std::fs::read_to_string(self.dir.join(layout::SCHEDULE_RECORD)).ok()?.trim())
    }
}

fn holder_record(instance: &str) -> String {
    serde_json::json!({"InstanceId": instance, "Pid": std::process::id()}).to_string()
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
         so each would run twice (see docs/cluster.md)"
    )]
    InUse { id: String, holder: String, data: PathBuf },
    #[error("cannot use the instance lock {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("cannot register instance `{id}` in the database: {why}")]
    Database { id: String, why: String },
}

impl Files {
    pub fn new(data_dir: &Path) -> Files {
        Files { data_dir: data_dir.to_path_buf() }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn try_singleton(&self, key: &JobKey, instance: &str) -> io::Result<Option<FileLease>> {
        try_lock_file(&self.singleton_path(key), instance)
    }

    pub fn singleton_holder(&self, key: &JobKey) -> Option<String> {
        holder_text(&std::fs::read_to_string(self.singleton_path(key)).ok()?)
    }

    fn singleton_path(&self, key: &JobKey) -> PathBuf {
        layout::job_data_dir(&self.data_dir, key).join(layout::SINGLETON_LOCK)
    }

    /// Opens the job's files once; its actor keeps them open.
    pub fn job(&self, key: &JobKey) -> io::Result<JobFiles> {
        let dir = layout::job_data_dir(&self.data_dir, key);
        std::fs::create_dir_all(&dir)?;
        Ok(JobFiles { dir })
    }

    /// Registers instance `id`: its lock is held for the daemon's whole life.
    pub fn register(&self, id: &str) -> Result<super::Lease, InstanceError> {
        let path = layout::instance_lock(&self.data_dir, id);
        let io_err = |cause| InstanceError::Io { path: path.clone(), cause };
        match try_lock_file(&path, id).map_err(io_err)? {
            Some(lease) => Ok(super::Lease::Files(lease)),
            None => Err(InstanceError::InUse {
                id: id.to_string(),
                holder: holder_pid(&path).map_or_else(|| "pid unknown".into(), |pid| format!("pid {pid}")),
                data: self.data_dir.clone(),
            }),
        }
    }

    /// The instances that registered here (their lock files).
    pub fn instances(&self) -> Vec<String> {
        let entries = std::fs::read_dir(layout::instances_dir(&self.data_dir)).into_iter().flatten().flatten();
        entries.filter_map(|e| e.file_name().to_str()?.strip_suffix(".lock").map(str::to_string)).collect()
    }

    /// Whether a daemon holds instance `id`'s lock.
    pub fn instance_alive(&self, id: &str) -> bool {
        let Ok(file) = File::open(layout::instance_lock(&self.data_dir, id)) else {
            return false;
        };
        Flock::lock(file, FlockArg::LockSharedNonblock).is_err()
    }
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
fn try_lock_file(path: &Path, instance: &str) -> io::Result<Option<FileLease>> {
    let file = open_lock(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            lock.write_all_at(&padded(&holder_record(instance)), 0)?;
            Ok(Some(FileLease { lock }))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

fn holder_pid(path: &Path) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(std::fs::read_to_string(path).ok()?.trim()).ok()?;
    v["Pid"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_lost_on_the_errors_nfs_gives_a_revoked_lock_only() {
        for errno in [libc::EIO, libc::ESTALE, libc::ENOLCK, libc::EBADF] {
            assert!(lock_lost(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [libc::ENOSPC, libc::EINTR, libc::EAGAIN, libc::EDQUOT] {
            assert!(!lock_lost(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_on_a_local_disk_is_never_lost() {
        let d = tempfile::tempdir().unwrap();
        let lease = try_lock_file(&d.path().join("l.lock"), "i").unwrap().unwrap();
        let lost = tokio::time::timeout(std::time::Duration::from_secs(30), lease.watch_lost()).await;
        assert!(lost.is_err(), "still held after 30 checks");
        assert!(std::fs::read_to_string(d.path().join("l.lock")).unwrap().contains("\"InstanceId\":\"i\""));
    }
}
