//! Persisted status of continuous jobs: `status_<instance>` in the job's data
//! folder, one file per daemon, rewritten in place on every change (see
//! [`write_record`]).
//! Client commands read these files; they survive the daemon.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A continuous job's status, as WebJobs names them (plus `Invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Initializing,
    Starting,
    Running,
    PendingRestart,
    Stopping,
    Stopped,
    InactiveInstance,
    Invalid,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Initializing => "Initializing",
            JobStatus::Starting => "Starting",
            JobStatus::Running => "Running",
            JobStatus::PendingRestart => "PendingRestart",
            JobStatus::Stopping => "Stopping",
            JobStatus::Stopped => "Stopped",
            JobStatus::InactiveInstance => "InactiveInstance",
            JobStatus::Invalid => "Invalid",
        }
    }
}

/// What one daemon says about one continuous job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContinuousStatus {
    pub status: JobStatus,
    pub instance: String,
    /// Process id (= process group id) of the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// `WEBJOBS_PORT` of the current process (where `…/passthrough/` goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// When the current process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the next restart is due (PendingRestart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart: Option<String>,
    /// Restarts since the job was (re)loaded.
    #[serde(default)]
    pub restarts: u32,
    /// How the last process ended ("exit code 1", "signal SIGKILL").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Why the job cannot run, or why its new configuration was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it is stopped (Stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub updated: String,
}

impl ContinuousStatus {
    pub fn new(instance: &str) -> ContinuousStatus {
        ContinuousStatus {
            status: JobStatus::Initializing,
            instance: instance.to_string(),
            pid: None,
            port: None,
            start_time: None,
            next_restart: None,
            restarts: 0,
            last_exit: None,
            error: None,
            reason: None,
            warnings: Vec::new(),
            updated: crate::logs::format_time(std::time::SystemTime::now()),
        }
    }
}

/// `status_<instance>` in `dir`.
pub fn status_path(dir: &Path, instance: &str) -> PathBuf {
    crate::layout::status_file(dir, instance)
}

/// Writes the status file (`file`: kept open between writes).
pub fn write(dir: &Path, status: &ContinuousStatus, file: &mut Record) -> io::Result<()> {
    let text = serde_json::to_vec(status).map_err(io::Error::other)?;
    file.write(&status_path(dir, &status.instance), &text)
}

/// Rewrites a small JSON file in place: padded with spaces to the file's
/// current length, so it never has to be truncated or replaced. (Replacing a
/// file by rename, or truncating it to zero, makes ext4 flush it to disk
/// every time; status files change on every restart.) Readers trim the padding;
/// one that reads during a write may see a torn record and tries again later.
pub fn write_record(path: &Path, json: &[u8]) -> io::Result<()> {
    Record::default().write(path, json)
}

/// A file rewritten by [`write_record`], kept open between writes (a
/// continuous job's status changes twice a restart).
#[derive(Debug, Default)]
pub struct Record {
    file: Option<std::fs::File>,
}

impl Record {
    pub fn write(&mut self, path: &Path, json: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let open = || std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path);
        let kept = self.file.take().and_then(|f| Some((f.metadata().ok()?, f)));
        let (meta, file) = match kept {
            // Still the file at `path` (not deleted with its folder meanwhile).
            Some((meta, file)) if meta.nlink() > 0 => (meta, file),
            _ => {
                let file = match open() {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
                        open()?
                    }
                    other => other?,
                };
                (file.metadata()?, file)
            }
        };
        let mut record = json.to_vec();
        record.resize((meta.len() as usize).max(json.len() + 1) - 1, b' ');
        record.push(b'\n');
        file.write_all_at(&record, 0)?;
        self.file = Some(file);
        Ok(())
    }
}

/// Every instance's status for the job whose data folder is `dir`.
pub fn read_all(dir: &Path) -> Vec<ContinuousStatus> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut all: Vec<ContinuousStatus> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(crate::layout::STATUS_PREFIX))
        .filter_map(|e| serde_json::from_slice(std::fs::read(e.path()).ok()?.trim_ascii()).ok())
        .collect();
    all.sort_by(|a, b| a.instance.cmp(&b.instance));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_shrink_without_truncation() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rec");
        write_record(&path, br#"{"a":"a long value here"}"#).unwrap();
        write_record(&path, br#"{"a":1}"#).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 26);
        assert_eq!(serde_json::from_str::<serde_json::Value>(text.trim()).unwrap()["a"], 1);
    }

    #[test]
    fn round_trip_with_webjobs_key_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("jobs/continuous/a");
        let mut s = ContinuousStatus::new("abc123");
        s.status = JobStatus::PendingRestart;
        s.next_restart = Some("2026-11-21T09:30:01.000Z".into());
        let mut file = Record::default();
        write(&dir, &s, &mut file).unwrap();
        let text = std::fs::read_to_string(status_path(&dir, "abc123")).unwrap();
        assert!(text.contains("\"Status\":\"PendingRestart\""), "{text}");
        assert_eq!(read_all(&dir), vec![s.clone()]);
        // Kept open, the file is written again in place; deleted with its
        // folder meanwhile, it is made again rather than written unseen.
        s.status = JobStatus::Running;
        write(&dir, &s, &mut file).unwrap();
        assert_eq!(read_all(&dir), vec![s.clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
        write(&dir, &s, &mut file).unwrap();
        assert_eq!(read_all(&dir), vec![s]);
    }
}
