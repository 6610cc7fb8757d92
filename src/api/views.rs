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
    /// Kudu's type is a non-nullable `DateTime`: while a run is going, its
    /// default value (`0001-01-01T00:00:00`), never `null`.
    pub end_time: String,
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
    /// CPU time of all the run's processes (cgroup containment), milliseconds.
    pub cpu_time_ms: Option<u64>,
    /// Peak memory of the run's cgroup, bytes (with the memory controller).
    pub memory_peak_bytes: Option<u64>,
    /// The queued request this run is an attempt of, and which attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    /// The JSON the run wrote to `WEBJOBS_RESULT_FILE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_error: Option<String>,
    /// Its progress (live while it runs, the last one after).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::history::Progress>,
    /// The run whose end started this one (`then`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::queue::RunRef>,
    /// The requests this run's end started (`then`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<crate::queue::RunRef>,
}

impl RunView {
    pub fn new(base: &str, job: &str, id: &str, s: RunStatus) -> RunView {
        let duration = s.duration_ms.map(std::time::Duration::from_millis).unwrap_or_else(|| since(&s.start_time));
        RunView {
            id: id.to_string(),
            name: id.to_string(),
            status: s.status.as_str().to_string(),
            start_time: s.start_time,
            end_time: s.end_time.unwrap_or_else(|| NO_TIME.to_string()),
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
            cpu_time_ms: s.cpu_ms,
            memory_peak_bytes: s.memory_peak,
            request: s.request,
            attempt: s.attempt,
            correlation_id: s.correlation_id,
            payload_bytes: s.payload_bytes,
            result: s.result,
            result_error: s.result_error,
            progress: s.progress,
            parent: s.parent,
            children: s.children,
        }
    }

    /// Reads run `id` of a job from its data folder.
    pub fn load(base: &str, job: &str, job_data: &Path, id: &str) -> Option<RunView> {
        if !history::is_run_id(id) {
            return None;
        }
        let dir = job_data.join(id);
        let mut status = history::read_status(&dir)?;
        if !status.status.is_final() {
            status.progress = history::Progress::read(&dir).or(status.progress);
        }
        Some(RunView::new(base, job, id, status))
    }
}

/// .NET's `default(DateTime)` as Newtonsoft.Json writes it.
pub const NO_TIME: &str = "0001-01-01T00:00:00";

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

/// One job, as WebJobs shows it (`GET /api/{type}webjobs/{job}`), plus our extensions.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The script, relative to the job folder (`inner/run.sh` for a job in a sub-folder).
    pub run_command: String,
    pub url: String,
    /// The job's page on the dashboard (Kudu: its page on the WebJobs dashboard).
    pub extra_info_url: String,
    pub error: Option<String>,
    pub using_sdk: bool,
    pub settings: Box<serde_json::value::RawValue>,
    /// Continuous: this daemon's status; triggered: the latest run's status (or "Ready").
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detailed_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_run: Option<Option<RunView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_logs_url: Option<String>,
    pub schedule: Option<String>,
    pub next_run: Option<String>,
    pub disabled: bool,
    pub warnings: Vec<String>,
    /// How this daemon contains the job's processes (one job's GET only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containment: Option<String>,
    /// Triggered: requests waiting in the job's queue, and the age in
    /// seconds of the oldest that may start now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_age_seconds: Option<f64>,
    /// The running process (continuous) or active run's process (triggered):
    /// its id (= its process group) and when it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Continuous: restarts since the job was (re)loaded, how the last
    /// process ended, and when the next restart is due (PendingRestart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_restart: Option<String>,
}

/// The settings object as written (already valid JSON).
fn raw_settings(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_string())
        .unwrap_or_else(|_| serde_json::value::RawValue::from_string("{}".to_string()).expect("valid JSON"))
}

impl JobView {
    /// From the catalog: no file is read.
    pub fn from_catalog(base: &str, entry: &crate::supervisor::CatalogEntry) -> JobView {
        use crate::supervisor::Live;
        let def = &entry.def;
        let (kind, name) = (def.key.kind.as_str(), def.key.name.as_ref());
        let errors = def.errors();
        let settings = def.settings.settings.as_ref().ok();
        let mut view = JobView {
            name: name.to_string(),
            kind,
            run_command: run_command(def),
            url: format!("{base}/api/{kind}webjobs/{name}"),
            extra_info_url: format!("{base}/#/job/{kind}/{name}"),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            using_sdk: def.using_sdk,
            settings: raw_settings(settings.map_or("{}", |s| &s.raw)),
            status: String::new(),
            detailed_status: None,
            log_url: None,
            latest_run: None,
            history_url: None,
            scheduler_logs_url: None,
            schedule: settings.and_then(|s| s.schedule.as_ref()).map(|s| s.source().to_string()),
            next_run: None,
            disabled: def.disabled,
            warnings: def.warnings(),
            containment: None,
            queued: None,
            queue_age_seconds: None,
            pid: None,
            started: None,
            restarts: None,
            last_exit: None,
            next_restart: None,
        };
        match &entry.live {
            Live::Continuous(rx) => {
                let s = rx.borrow();
                view.status = s.status.as_str().to_string();
                view.detailed_status = Some(format!("{} - {}", s.instance, s.status.as_str()));
                view.error = s.error.clone().or(view.error);
                view.log_url = Some(format!("{base}/vfs/data/jobs/continuous/{name}/job_log.txt"));
                view.pid = s.pid;
                view.started = s.pid.and(s.start_time.clone());
                view.restarts = Some(s.restarts);
                view.last_exit = s.last_exit.clone();
                view.next_restart = s.next_restart.clone();
            }
            Live::Triggered(rx) => {
                // A copy: the actor waits on its lock to publish (and the
                // newest run is parsed below).
                let s = rx.borrow().clone();
                let run = s.latest.as_ref().and_then(|l| Some((l.id(), l.status()?)));
                let active = run.as_ref().is_some_and(|(_, run)| !run.status.is_final());
                if let Some((_, run)) = run.as_ref().filter(|_| active) {
                    view.pid = run.pid;
                    view.started = Some(run.start_time.clone());
                }
                let latest = run.map(|(id, run)| RunView::new(base, name, id, run));
                view.status = if s.disabled && !active {
                    "Stopped".into()
                } else {
                    latest
                        .as_ref()
                        .map(|r| r.status.clone())
                        .unwrap_or_else(|| if errors.is_empty() { "Ready".into() } else { "Invalid".into() })
                };
                if let Some(failure) = &s.failure {
                    view.status = "Invalid".into();
                    view.error = Some(failure.clone());
                }
                view.latest_run = Some(latest);
                view.next_run = s.next_tick.map(|t| t.to_string());
                view.queued = Some(s.queued);
                let now = jiff::Timestamp::now().as_millisecond();
                view.queue_age_seconds = s.oldest_queued_ms.map(|ms| (now - ms).max(0) as f64 / 1000.0);
                view.history_url = Some(format!("{base}/api/triggeredwebjobs/{name}/history"));
                view.scheduler_logs_url = Some(format!("{base}/vfs/data/jobs/triggered/{name}/job_scheduler.log"));
            }
        }
        if !errors.is_empty() && view.status.is_empty() {
            view.status = "Invalid".into();
        }
        view
    }
}

/// The script's path relative to the job folder, as Kudu shows it ("" when there is none).
fn run_command(def: &crate::jobs::JobDef) -> String {
    let Ok(script) = &def.script else { return String::new() };
    let inner = def.script_dir.strip_prefix(&def.dir).unwrap_or(std::path::Path::new(""));
    inner.join(&script.file).to_string_lossy().into_owned()
}

impl JobView {
    /// The same view with no server path in its messages.
    pub fn redacted(mut self, config: &crate::config::Config) -> JobView {
        self.redact(config);
        self
    }

    pub fn redact(&mut self, config: &crate::config::Config) {
        if let Some(e) = &self.error {
            self.error = Some(super::redact(config, e));
        }
        for w in &mut self.warnings {
            *w = super::redact(config, w);
        }
    }

    /// A job just deployed (the daemon has not picked it up yet).
    pub fn from_def(base: &str, def: &crate::jobs::JobDef) -> JobView {
        use crate::supervisor::{CatalogEntry, Live};
        let live = match def.key.kind {
            crate::key::JobKind::Continuous => {
                let mut status = crate::status::ContinuousStatus::new("");
                status.status = crate::status::JobStatus::Initializing;
                Live::Continuous(crate::actor::Published::fixed(status))
            }
            crate::key::JobKind::Triggered => Live::Triggered(crate::actor::Published::fixed(Default::default())),
        };
        let entry = CatalogEntry { def: std::sync::Arc::new(def.clone()), live };
        let mut view = JobView::from_catalog(base, &entry);
        view.detailed_status = None;
        view
    }
}
