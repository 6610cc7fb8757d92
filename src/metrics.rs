//! Prometheus metrics (`GET /metrics`, text format).
//!
//! Counters and histograms are updated where things happen (a run ends, a
//! continuous job restarts, a tick fires); the jobs-by-status gauge is filled
//! from the catalog at scrape time.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::borrow::Cow;

/// A job's labels (`type`, `job`): the job's name is the one allocation, as
/// ten thousand jobs have a set in each of several families.
type Labels = [(&'static str, Cow<'static, str>); 2];
/// A job's labels and its run's `result`.
type ResultLabels = [(&'static str, Cow<'static, str>); 3];
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

fn delay_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    jobs: Family<Labels, Gauge>,
    runs: Family<ResultLabels, Counter>,
    run_duration: HistogramFamily,
    restarts: Family<Labels, Counter>,
    schedule_delay: Histogram,
    log_bytes: Family<Labels, Counter>,
    cpu: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    queued: Family<Labels, Counter>,
    dead: Family<Labels, Counter>,
    queue_depth: Family<Labels, Gauge>,
    queue_age: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    notifications: Family<[(&'static str, &'static str); 1], Counter>,
    notifications_pending: Gauge,
    /// When the oldest ready request of each job was queued (ms), for the age at scrape time.
    oldest: Mutex<std::collections::HashMap<String, i64>>,
}

fn job_labels(kind: &'static str, job: &str) -> Labels {
    [("type", Cow::Borrowed(kind)), ("job", Cow::Owned(job.to_string()))]
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("webjobs")),
            jobs: Family::default(),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram),
            restarts: Family::default(),
            schedule_delay: delay_histogram(),
            log_bytes: Family::default(),
            cpu: Family::default(),
            queued: Family::default(),
            dead: Family::default(),
            queue_depth: Family::default(),
            queue_age: Family::default(),
            notifications: Family::default(),
            notifications_pending: Gauge::default(),
            oldest: Mutex::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register("jobs", "Jobs by type and status", m.jobs.clone());
            r.register("runs", "Finished triggered runs by result", m.runs.clone());
            r.register("run_duration_seconds", "Duration of triggered runs", m.run_duration.clone());
            r.register("restarts", "Restarts of continuous jobs", m.restarts.clone());
            r.register(
                "schedule_delay_seconds",
                "Delay between a schedule tick and the start of its run",
                m.schedule_delay.clone(),
            );
            r.register("log_bytes", "Bytes of job output written to logs", m.log_bytes.clone());
            r.register("cpu_seconds", "CPU time of ended runs and processes, from their cgroups", m.cpu.clone());
            r.register("queued", "Run requests queued", m.queued.clone());
            r.register("dead", "Run requests that went dead (no attempt left)", m.dead.clone());
            r.register("queue_depth", "Run requests waiting in a job's queue", m.queue_depth.clone());
            r.register(
                "queue_oldest_age_seconds",
                "Age of the oldest request of a job's queue that may start now",
                m.queue_age.clone(),
            );
            r.register("notifications", "Notifications delivered or given up", m.notifications.clone());
            r.register("notifications_pending", "Notifications waiting in the outbox", m.notifications_pending.clone());
        }
        m
    }

    pub fn run_finished(&self, job: &str, result: &'static str, duration: Duration) {
        let [kind, job] = job_labels("triggered", job);
        self.runs.get_or_create(&[kind.clone(), job.clone(), ("result", Cow::Borrowed(result))]).inc();
        self.run_duration.get_or_create(&[kind, job]).observe(duration.as_secs_f64());
    }

    pub fn restarted(&self, job: &str) {
        self.restarts.get_or_create(&job_labels("continuous", job)).inc();
    }

    pub fn tick_started(&self, delay: Duration) {
        self.schedule_delay.observe(delay.as_secs_f64());
    }

    /// CPU time of a run or process that ended (known only with cgroups).
    pub fn cpu_used(&self, kind: &'static str, job: &str, cpu_ms: Option<u64>) {
        if let Some(ms) = cpu_ms {
            self.cpu.get_or_create(&job_labels(kind, job)).inc_by(ms as f64 / 1000.0);
        }
    }

    pub fn output(&self, kind: &'static str, job: &str, bytes: u64) {
        if bytes > 0 {
            self.log_bytes.get_or_create(&job_labels(kind, job)).inc_by(bytes);
        }
    }

    /// A notification was `delivered` or given up (`failed`).
    pub fn notification(&self, result: &'static str) {
        self.notifications.get_or_create(&[("result", result)]).inc();
    }

    pub fn notifications_pending(&self, n: usize) {
        self.notifications_pending.set(n as i64);
    }

    pub fn queued(&self, job: &str) {
        self.queued.get_or_create(&job_labels("triggered", job)).inc();
    }

    pub fn dead(&self, job: &str) {
        self.dead.get_or_create(&job_labels("triggered", job)).inc();
    }

    /// A job's queue holds `depth` requests; the oldest that may start was
    /// queued at `oldest_ms`.
    pub fn queue_depth(&self, job: &str, depth: u32, oldest_ms: Option<i64>) {
        let labels = job_labels("triggered", job);
        if depth == 0 {
            self.queue_depth.remove(&labels);
        } else {
            self.queue_depth.get_or_create(&labels).set(depth as i64);
        }
        let mut oldest = self.oldest.lock().unwrap_or_else(|e| e.into_inner());
        match oldest_ms {
            Some(ms) => oldest.insert(job.to_string(), ms),
            None => oldest.remove(job),
        };
    }

    /// The text exposition, with the jobs gauge set from `counts` (type, status, n).
    pub fn render(&self, counts: &[(String, String, i64)]) -> String {
        self.queue_age.clear();
        let now = jiff::Timestamp::now().as_millisecond();
        for (job, ms) in self.oldest.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let age = (now - ms).max(0) as f64 / 1000.0;
            self.queue_age.get_or_create(&job_labels("triggered", job)).set(age);
        }
        self.jobs.clear();
        for (kind, status, n) in counts {
            let labels = [("type", Cow::Owned(kind.clone())), ("status", Cow::Owned(status.clone()))];
            self.jobs.get_or_create(&labels).set(*n);
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = encode(&mut out, &registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let m = Metrics::new();
        m.run_finished("nightly", "Success", Duration::from_millis(1500));
        m.restarted("worker");
        m.tick_started(Duration::from_millis(2));
        m.output("continuous", "worker", 42);
        let text = m.render(&[("continuous".into(), "Running".into(), 3)]);
        assert!(text.contains("webjobs_jobs{type=\"continuous\",status=\"Running\"} 3"), "{text}");
        assert!(text.contains("webjobs_runs_total{type=\"triggered\",job=\"nightly\",result=\"Success\"} 1"), "{text}");
        assert!(text.contains("webjobs_restarts_total{type=\"continuous\",job=\"worker\"} 1"));
        assert!(text.contains("webjobs_log_bytes_total{type=\"continuous\",job=\"worker\"} 42"));
        assert!(text.contains("webjobs_run_duration_seconds_bucket"));
        assert!(text.contains("webjobs_schedule_delay_seconds_count 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
