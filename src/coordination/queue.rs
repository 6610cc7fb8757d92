//! The run queue of one triggered job in the lock-file backend: one file per
//! request in the job's data folder, moved by `rename` (atomic on one host
//! and on NFS), so that a request is taken by exactly one daemon.
//!
//! ```text
//! queue/<rank>-<id>-<due>.run     queued (the name orders the queue; the file is the request as JSON)
//! queue/taken/<instance>/<name>   taken by a daemon: its run is starting or running
//! queue/dead/<id>.run             no attempt left
//! queue/payloads/<id>             the request's payload (whatever state it is in)
//! queue/keys/<hash>               a dedup key: `<id> <expiry ms>` (0 = while queued or running)
//! queue/.lock                     held while a dedup key is checked and written
//! ```
//!
//! A request is written beside the queue and renamed into it: it is queued
//! once it is whole, never half. Nothing is `fsync`ed: what was acknowledged
//! survives the daemon's death (SIGKILL), not the machine's.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::files::JobFiles;
use crate::queue::{Entry, Slot};

/// A request taken from the queue by this daemon.
#[derive(Debug, Clone)]
pub struct Taken {
    pub(super) place: Place,
    pub entry: Entry,
}

/// Where a taken request is kept.
#[derive(Debug, Clone)]
pub(super) enum Place {
    /// Its file under `taken/<instance>/`.
    File(PathBuf),
    /// Its row in the database, taken by this session.
    Row { session: i64 },
}

impl Taken {
    fn path(&self) -> io::Result<&Path> {
        match &self.place {
            Place::File(path) => Ok(path),
            Place::Row { .. } => Err(io::Error::other("a request taken from the database is not a file")),
        }
    }
}

/// Why a request was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unstored {
    #[error(transparent)]
    Duplicate(#[from] Duplicate),
    /// Its schedule tick was claimed by another daemon (a database backend
    /// claims a tick and stores its request in one transaction).
    #[error("the schedule tick was claimed by another daemon")]
    TickTaken,
}

/// A request with this dedup key is queued or running (or ended within the window).
#[derive(Debug, Clone, thiserror::Error)]
#[error("a request with key {key:?} is already queued or running ({id}); it is refused as a duplicate")]
pub struct Duplicate {
    pub key: String,
    pub id: String,
}

const TAKEN: &str = "taken";
const DEAD: &str = "dead";
const PAYLOADS: &str = "payloads";
const KEYS: &str = "keys";

impl JobFiles {
    fn queue(&self) -> PathBuf {
        self.dir().join(crate::layout::QUEUE_DIR)
    }

    /// Queues `entry` (and its payload). Refused while another request with
    /// its key is queued or running, or ended less than `window` ago.
    pub fn enqueue(&self, entry: &Entry, payload: Option<&[u8]>) -> io::Result<Result<(), Unstored>> {
        std::fs::create_dir_all(self.queue())?;
        let _lock = match &entry.key {
            Some(key) => {
                let lock = self.lock()?;
                if let Some(existing) = self.key_holder(key)? {
                    return Ok(Err(Duplicate { key: key.clone(), id: existing }.into()));
                }
                Some(lock)
            }
            None => None,
        };
        if let Some(bytes) = payload {
            let dir = self.queue().join(PAYLOADS);
            write_new(&dir, &entry.id, bytes)?;
        }
        if let Some(key) = &entry.key {
            write_new(&self.queue().join(KEYS), &key_file(key), format!("{} 0", entry.id).as_bytes())?;
        }
        write_new(&self.queue(), &entry.slot().file_name(), &serde_json::to_vec(entry)?)?;
        Ok(Ok(()))
    }

    /// Every queued request (a directory read; entries are not opened).
    pub fn scan(&self) -> io::Result<Vec<Slot>> {
        let read = match std::fs::read_dir(self.queue()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        Ok(read.flatten().filter_map(|e| Slot::parse(e.file_name().to_str()?)).collect())
    }

    /// Takes a queued request for `instance`: `None` when another daemon took
    /// it first (or it was cancelled).
    pub fn take(&self, slot: &Slot, instance: &str) -> io::Result<Option<Taken>> {
        let name = slot.file_name();
        let to = self.queue().join(TAKEN).join(instance).join(&name);
        if !crate::queue::take_by_rename(&self.queue().join(&name), &to)? {
            return Ok(None);
        }
        let entry = read_entry(&to)?;
        Ok(Some(Taken { place: Place::File(to), entry }))
    }

    /// Where a request's payload is.
    pub fn payload_path(&self, id: &str) -> PathBuf {
        self.queue().join(PAYLOADS).join(id)
    }

    /// The request is done: its entry and payload go; its key stays taken
    /// for `window`.
    pub fn done(&self, taken: Taken, window: Duration) -> io::Result<()> {
        self.release_key(&taken.entry, window)?;
        let _ = std::fs::remove_file(self.payload_path(&taken.entry.id));
        remove(taken.path()?)
    }

    /// Puts a taken request back in the queue as `entry` says (its attempts,
    /// when it is due).
    pub fn requeue(&self, taken: Taken, entry: &Entry) -> io::Result<Slot> {
        let slot = entry.slot();
        std::fs::write(taken.path()?, serde_json::to_vec(entry)?)?;
        std::fs::rename(taken.path()?, self.queue().join(slot.file_name()))?;
        Ok(slot)
    }

    /// No attempt left: the request is set aside as `entry` says (its runs,
    /// its error); its key is free again.
    /// The newest `keep` dead requests are kept (with their payloads).
    pub fn bury(&self, taken: Taken, entry: &Entry, keep: usize) -> io::Result<()> {
        let dead = self.queue().join(DEAD);
        write_new(&dead, &format!("{}.run", entry.id), &serde_json::to_vec(entry)?)?;
        self.release_key(entry, Duration::ZERO)?;
        remove(taken.path()?)?;
        let mut names: Vec<String> = std::fs::read_dir(&dead)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".run") && !n.starts_with('.'))
            .collect();
        // Ids sort by the time they were queued: the oldest go first.
        names.sort();
        let extra = names.len().saturating_sub(keep.max(1));
        for name in &names[..extra] {
            let _ = std::fs::remove_file(dead.join(name));
            let _ = std::fs::remove_file(self.payload_path(name.trim_end_matches(".run")));
        }
        Ok(())
    }

    /// Dead requests, newest first.
    pub fn dead(&self) -> Vec<Entry> {
        let mut entries: Vec<Entry> = read_entries(&self.queue().join(DEAD));
        entries.sort_by(|a, b| b.id.cmp(&a.id));
        entries
    }

    /// Queues dead request `id` (or the dead request whose runs include `id`)
    /// again, as new: its attempts start over.
    pub fn revive(&self, id: &str) -> io::Result<Option<Entry>> {
        let Some(mut entry) = self.dead().into_iter().find(|e| e.id == id || e.runs.iter().any(|r| r == id)) else {
            return Ok(None);
        };
        let path = self.queue().join(DEAD).join(format!("{}.run", entry.id));
        entry.attempts = 0;
        entry.due_ms = None;
        entry.error = None;
        if let Some(key) = &entry.key {
            let _lock = self.lock()?;
            if let Some(holder) = self.key_holder(key)? {
                return Err(io::Error::other(Duplicate { key: key.clone(), id: holder }));
            }
            write_new(&self.queue().join(KEYS), &key_file(key), format!("{} 0", entry.id).as_bytes())?;
        }
        std::fs::write(&path, serde_json::to_vec(&entry)?)?;
        std::fs::rename(&path, self.queue().join(entry.slot().file_name()))?;
        Ok(Some(entry))
    }

    /// Removes queued request `id` (a cancelled one-off run): false when it
    /// is not queued (started, done, or unknown).
    pub fn remove_queued(&self, id: &str) -> io::Result<Option<Entry>> {
        let Some(slot) = self.scan()?.into_iter().find(|s| &*s.id == id) else { return Ok(None) };
        let path = self.queue().join(slot.file_name());
        let Ok(entry) = read_entry(&path) else { return Ok(None) };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        }
        self.release_key(&entry, Duration::ZERO)?;
        let _ = std::fs::remove_file(self.payload_path(id));
        Ok(Some(entry))
    }

    /// The queued requests themselves (each entry read), in queue order; at most `limit`.
    /// With `id`, only that request (if it is queued).
    pub fn queued(&self, limit: usize, id: Option<&str>) -> Vec<Entry> {
        let slots = self.scan().unwrap_or_default().into_iter().filter(|s| id.is_none_or(|id| &*s.id == id));
        let mut names: Vec<String> = slots.map(|s| s.file_name()).collect();
        names.sort();
        names.iter().take(limit).filter_map(|n| read_entry(&self.queue().join(n)).ok()).collect()
    }

    /// The instances that hold taken requests of this job.
    pub fn takers(&self) -> Vec<String> {
        let dir = self.queue().join(TAKEN);
        let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
        entries.filter_map(|e| e.file_name().into_string().ok()).collect()
    }

    /// The requests `instance` had taken (it is gone: they are recovered).
    pub fn taken_by(&self, instance: &str) -> Vec<Taken> {
        let dir = self.queue().join(TAKEN).join(instance);
        let entries = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        let taken = entries
            .filter_map(|e| {
                let path = e.path();
                read_entry(&path).ok().map(|entry| Taken { place: Place::File(path), entry })
            })
            .collect();
        let _ = std::fs::remove_dir(dir);
        taken
    }

    /// Moves a request another instance had taken to this instance (before
    /// its recovery), so that no other daemon recovers it too.
    pub fn adopt(&self, taken: Taken, instance: &str) -> io::Result<Option<Taken>> {
        let from = taken.path()?;
        let to = self.queue().join(TAKEN).join(instance).join(from.file_name().unwrap_or_default());
        let adopted = crate::queue::take_by_rename(from, &to)?;
        Ok(adopted.then_some(Taken { place: Place::File(to), entry: taken.entry }))
    }

    fn lock(&self) -> io::Result<Flock<File>> {
        let file = File::options().create(true).truncate(false).write(true).open(self.queue().join(".lock"))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
    }

    /// The request holding `key`, if the key is taken now.
    fn key_holder(&self, key: &str) -> io::Result<Option<String>> {
        let text = match std::fs::read_to_string(self.queue().join(KEYS).join(key_file(key))) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        let (id, expiry) = text.trim().split_once(' ').unwrap_or((text.trim(), "0"));
        let expiry: i64 = expiry.parse().unwrap_or(0);
        let now = jiff::Timestamp::now().as_millisecond();
        let holds = if expiry == 0 { self.exists(id) } else { now < expiry };
        Ok(holds.then(|| id.to_string()))
    }

    /// Whether request `id` is queued, taken or dead.
    pub fn known(&self, id: &str) -> bool {
        self.queue().join(DEAD).join(format!("{id}.run")).exists() || self.exists(id)
    }

    /// Whether request `id` is queued or taken.
    fn exists(&self, id: &str) -> bool {
        let queued = self.scan().unwrap_or_default().iter().any(|s| &*s.id == id);
        queued
            || self.takers().iter().any(|who| {
                let dir = self.queue().join(TAKEN).join(who);
                let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
                entries.filter_map(|e| Slot::parse(e.file_name().to_str()?)).any(|s| &*s.id == id)
            })
    }

    fn release_key(&self, entry: &Entry, window: Duration) -> io::Result<()> {
        let Some(key) = &entry.key else { return Ok(()) };
        let path = self.queue().join(KEYS).join(key_file(key));
        // Only our own key: a newer request may hold it after a dead one.
        let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.split(' ').next() == Some(entry.id.as_str()));
        if !ours {
            return Ok(());
        }
        if window.is_zero() {
            return remove(&path);
        }
        let expiry = jiff::Timestamp::now().as_millisecond() + window.as_millis() as i64;
        write_new(&self.queue().join(KEYS), &key_file(key), format!("{} {expiry}", entry.id).as_bytes())
    }
}

/// A key's file name: its hash (keys are any text).
fn key_file(key: &str) -> String {
    format!("{:016x}", crate::hash::fnv1a(key.as_bytes()))
}

/// Writes `name` in `dir` whole: beside it first, then renamed into place.
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.{:x}.tmp", crate::queue::random()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))
    };
    let result = match write() {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {
            std::fs::create_dir_all(dir)?;
            write()
        }
        other => other,
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn read_entry(path: &Path) -> io::Result<Entry> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_entries(dir: &Path) -> Vec<Entry> {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".run")))
        .filter_map(|e| read_entry(&e.path()).ok())
        .collect()
}
