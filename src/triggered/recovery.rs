//! What a triggered job's actor recovers at start: runs left unfinished by
//! a daemon that is gone become Aborted; run ids keep increasing.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::Actor;
use crate::history::{self, RunState, RunStatus};
use crate::logs::{Level, LogFile, format_time};

impl Actor {
    /// A run id after every id this actor handed out (ids sort by time).
    pub(super) fn next_run_id(&mut self) -> String {
        let mut id = history::run_id(Timestamp::now());
        if let Some(last) = &self.last_run_id
            && id <= *last
        {
            id = format!("{:018}", last.parse::<u64>().unwrap_or(0) + 1);
        }
        self.last_run_id = Some(id.clone());
        id
    }

    /// Runs left unfinished by this instance's previous life, or by a daemon
    /// that is gone, become Aborted.
    pub(super) async fn mark_lost_runs(&mut self) {
        for id in history::run_ids(&self.data_dir) {
            let dir = self.data_dir.join(&id);
            let mut status =
                history::read_status(&dir).unwrap_or_else(|| lost_before_start(&dir, &self.shared.instance));
            if status.status.is_final() {
                continue;
            }
            let mine = *status.instance == *self.shared.instance;
            if !mine && self.shared.coordinator.instance_alive(&status.instance).await {
                continue;
            }
            status.status = RunState::Aborted;
            status.end_time = Some(format_time(std::time::SystemTime::now()));
            status.error =
                Some(format!("the daemon running it (instance {}) stopped before the run ended", status.instance));
            status.pid = None;
            let _ = history::write_status(&dir, &status);
            self.share_run(&id, &status, true).await;
            if let Ok(mut log) = LogFile::open(&dir.join(crate::layout::OUTPUT_LOG), self.shared.instance.clone(), None)
            {
                log.sys(
                    Level::SysError,
                    &format!("run {id} marked Aborted: {}", status.error.as_deref().unwrap_or_default()),
                );
            }
        }
    }
}

/// The status of a run folder whose status was never written (the daemon
/// died between creating the folder and starting the process).
fn lost_before_start(dir: &std::path::Path, instance: &str) -> RunStatus {
    let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let start_time = jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", &id[..14.min(id.len())])
        .ok()
        .and_then(|dt| dt.to_zoned(TimeZone::UTC).ok())
        .map(|z| format_time(std::time::SystemTime::from(z.timestamp())))
        .unwrap_or_default();
    RunStatus {
        status: RunState::Initializing,
        start_time,
        end_time: None,
        trigger: String::new(),
        exit_code: None,
        signal: None,
        instance: instance.to_string(),
        pid: None,
        arguments: Vec::new(),
        error: None,
        duration_ms: None,
        cpu_ms: None,
        memory_peak: None,
        request: None,
        attempt: None,
        correlation_id: None,
        payload_bytes: None,
        result: None,
        result_error: None,
        progress: None,
        parent: None,
        children: Vec::new(),
    }
}
