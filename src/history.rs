//! Run history of triggered jobs: one folder per run under the job's data
//! folder, named by run id (UTC `yyyyMMddHHmmssffff`, so names sort by time),
//! holding a `status` JSON file (WebJobs' keys) and `output_log.txt`.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A run's state, as WebJobs names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Initializing,
    Running,
    Success,
    Failed,
    Aborted,
    Cancelled,
}

impl RunState {
    pub fn is_final(self) -> bool {
        !matches!(self, RunState::Initializing | RunState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Initializing => "Initializing",
            RunState::Running => "Running",
            RunState::Success => "Success",
            RunState::Failed => "Failed",
            RunState::Aborted => "Aborted",
            RunState::Cancelled => "Cancelled",
        }
    }
}

/// The `status` file of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunStatus {
    pub status: RunState,
    pub start_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// `External - <who>`, `Schedule - <expr>`, `Retry 1/3 of <run id>`, …
    pub trigger: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default)]
    pub arguments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds from start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// CPU time of every process of the run (from its cgroup), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Peak memory of the run's cgroup, bytes (where the memory controller is enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<u64>,
    /// The queued request this run is an attempt of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Which attempt of its request (1 = the first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The caller's correlation id, kept from the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Size of the payload the run was given (`WEBJOBS_PAYLOAD_FILE`, stdin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    /// What the run wrote to `WEBJOBS_RESULT_FILE` (JSON, at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why the result file was not taken (too large, not JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_error: Option<String>,
    /// The run's last progress (`WEBJOBS_PROGRESS_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The run whose end started this one (`then`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::queue::RunRef>,
    /// The requests this run's end started (`then`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<crate::queue::RunRef>,
}

/// How far a run says it is: `42`, `42% message`, `42 message`, or JSON
/// `{"percent": 42, "message": "…"}` written to `WEBJOBS_PROGRESS_FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The largest result a run may leave.
pub const MAX_RESULT: u64 = 64 * 1024;

impl Progress {
    pub fn parse(text: &str) -> Option<Progress> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if text.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(text).ok()?;
            let percent = v["percent"].as_f64();
            let message = v["message"].as_str().map(str::to_string);
            return (percent.is_some() || message.is_some()).then_some(Progress { percent, message });
        }
        let (first, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let message = |m: &str| (!m.trim().is_empty()).then(|| m.trim().chars().take(1000).collect::<String>());
        match first.trim_end_matches('%').parse::<f64>() {
            Ok(p) if p.is_finite() => Some(Progress { percent: Some(p.clamp(0.0, 100.0)), message: message(rest) }),
            _ => Some(Progress { percent: None, message: message(text) }),
        }
    }

    /// The progress a run folder holds now (the last 4 KiB of the file).
    pub fn read(run_dir: &Path) -> Option<Progress> {
        let bytes = read_tail(&run_dir.join(crate::layout::RUN_PROGRESS), 4096).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        // The last complete line, or the whole text when it is one line.
        let line = text.trim_end().rsplit('\n').next().unwrap_or_default();
        Progress::parse(line)
    }
}

/// The last `max` bytes of a file.
fn read_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(io::SeekFrom::Start(len.saturating_sub(max)))?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The result a run folder holds: `Ok(None)` when the run wrote none.
pub fn read_result(run_dir: &Path) -> Result<Option<serde_json::Value>, String> {
    let path = run_dir.join(crate::layout::RUN_RESULT);
    let size = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the result file: {e}")),
    };
    if size > MAX_RESULT {
        return Err(format!("the result file is {size} bytes, more than the {MAX_RESULT} allowed; it was ignored"));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read the result file: {e}"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("the result file is not JSON ({e}); it was ignored"))
}

/// A fresh run id for `now`: `yyyyMMddHHmmssffff` (UTC, ten-thousandths of a second).
pub fn run_id(now: jiff::Timestamp) -> String {
    let z = now.to_zoned(jiff::tz::TimeZone::UTC);
    let ffff = now.subsec_nanosecond() / 100_000;
    format!("{}{ffff:04}", z.strftime("%Y%m%d%H%M%S"))
}

/// Creates the folder of run `id` (or, in the rare case it exists, of the
/// next free id; the folder name is what history shows).
pub fn create_run_dir_named(job_data: &Path, id: &str) -> io::Result<PathBuf> {
    let mut n: u64 = id.parse().map_err(io::Error::other)?;
    for _ in 0..1000 {
        let dir = job_data.join(format!("{n:018}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(job_data)?,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free run id"))
}

/// The last `max` bytes of a file as text, from its first whole line.
pub fn tail_text(path: &Path, max: usize) -> String {
    let Ok(bytes) = read_tail(path, max as u64) else { return String::new() };
    let whole = std::fs::metadata(path).is_ok_and(|m| m.len() <= max as u64);
    let start = if whole { 0 } else { memchr::memchr(b'\n', &bytes).map_or(0, |n| n + 1) };
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

pub fn is_run_id(name: &str) -> bool {
    name.len() == 18 && name.bytes().all(|b| b.is_ascii_digit())
}

/// Writes a run's status (in place; see [`crate::status::write_record`]).
pub fn write_status(dir: &Path, status: &RunStatus) -> io::Result<()> {
    let text = serde_json::to_vec(status).map_err(io::Error::other)?;
    crate::status::write_record(&dir.join(crate::layout::RUN_STATUS), &text)
}

pub fn read_status(dir: &Path) -> Option<RunStatus> {
    serde_json::from_slice(std::fs::read(dir.join(crate::layout::RUN_STATUS)).ok()?.trim_ascii()).ok()
}

/// Run ids of a job, newest first.
pub fn run_ids(job_data: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(job_data) else { return Vec::new() };
    let mut ids: Vec<String> =
        entries.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| is_run_id(n)).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// Keeps the newest `keep` runs (never removing `active`).
pub fn prune(job_data: &Path, keep: usize, active: &[&str]) {
    for id in run_ids(job_data).into_iter().skip(keep) {
        if !active.contains(&id.as_str()) {
            let _ = std::fs::remove_dir_all(job_data.join(&id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_utc_with_ten_thousandths() {
        let t: jiff::Timestamp = "2026-11-21T09:30:00.123456Z".parse().unwrap();
        assert_eq!(run_id(t), "202611210930001234");
        assert!(is_run_id(&run_id(t)));
    }

    #[test]
    fn ids_are_unique_and_listed_newest_first_and_pruned() {
        let d = tempfile::tempdir().unwrap();
        let t: jiff::Timestamp = "2026-11-21T09:30:00Z".parse().unwrap();
        let name = |p: PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        let ids: Vec<String> = (0..5).map(|_| name(create_run_dir_named(d.path(), &run_id(t)).unwrap())).collect();
        assert_eq!(ids[1], "202611210930000001");
        let listed = run_ids(d.path());
        assert_eq!(listed[0], ids[4]);
        prune(d.path(), 2, &[&ids[0]]);
        assert_eq!(run_ids(d.path()), vec![ids[4].clone(), ids[3].clone(), ids[0].clone()]);
    }
}
