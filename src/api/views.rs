//! JSON shapes of the API, with WebJobs' field names.

use std::path::Path;

use serde::Serialize;

use crate::history::{self, RunStatus};

/// One run (`GET …/history/{id}`), as WebJobs shows it, plus our extensions.
#[derive(Debug, Serialize)]
pub struct RunView {
    pub id: String,
    pub name: String,
    pub status: String,
    pub start_time: String,
    pub end_time: Option<String>,
    /// .NET TimeSpan text `hh:mm:ss.fffffff`, up to now while running.
    pub duration: String,
    pub output_url: String,
    pub error_url: Option<String>,
    pub url: String,
    pub job_name: String,
    pub trigger: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub instance: String,
    pub arguments: Vec<String>,
    pub error: Option<String>,
}

impl RunView {
    pub fn new(base: &str, job: &str, id: &str, s: RunStatus) -> RunView {
        let duration = s.duration_ms.map(std::time::Duration::from_millis).unwrap_or_else(|| since(&s.start_time));
        RunView {
            id: id.to_string(),
            name: id.to_string(),
            status: s.status.as_str().to_string(),
            start_time: s.start_time,
            end_time: s.end_time,
            duration: timespan(duration),
            output_url: format!("{base}/vfs/data/jobs/triggered/{job}/{id}/output_log.txt"),
            error_url: None,
            url: format!("{base}/api/triggeredwebjobs/{job}/history/{id}"),
            job_name: job.to_string(),
            trigger: s.trigger,
            exit_code: s.exit_code,
            signal: s.signal,
            instance: s.instance,
            arguments: s.arguments,
            error: s.error,
        }
    }

    /// Reads run `id` of a job from its data folder.
    pub fn load(base: &str, job: &str, job_data: &Path, id: &str) -> Option<RunView> {
        if !history::is_run_id(id) {
            return None;
        }
        history::read_status(&job_data.join(id)).map(|s| RunView::new(base, job, id, s))
    }
}

fn since(start: &str) -> std::time::Duration {
    start
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs())
        .unwrap_or_default()
}

/// `hh:mm:ss.fffffff`, days folded into hours beyond 24 as .NET does with `d.`.
pub fn timespan(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let ticks = d.subsec_nanos() / 100;
    let day = if days > 0 { format!("{days}.") } else { String::new() };
    format!("{day}{h:02}:{m:02}:{s:02}.{ticks:07}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_dotnet_timespans() {
        assert_eq!(timespan(std::time::Duration::from_millis(1500)), "00:00:01.5000000");
        assert_eq!(timespan(std::time::Duration::from_secs(90_061)), "1.01:01:01.0000000");
    }
}
