//! Prometheus metrics (`GET /metrics`, text format).
//!
//! Counters and histograms are updated where things happen (a run ends, a
//! continuous job restarts, a tick fires); the jobs-by-status gauge is filled
//! from the catalog at scrape time.
//!
//! Per-job series are kept in one compact record per job ([`JobCounts`], a
//! collector encodes them at scrape time) rather than a family per metric:
//! with ten thousand jobs, a family's hash map entries, label sets and
//! histograms came to about 1.2 KB a job once each had run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Upper bounds of the run duration buckets, seconds (0.01 × 4ⁿ; +Inf after them).
const DURATION_BOUNDS: [f64; 10] = [0.01, 0.04, 0.16, 0.64, 2.56, 10.24, 40.96, 163.84, 655.36, 2621.44];

/// The results a triggered run ends with, as the `result` label says them.
const RESULTS: [&str; 4] = ["Success", "Failed", "Aborted", "Cancelled"];

fn delay_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    jobs: Family<[(&'static str, String); 2], Gauge>,
    schedule_delay: Histogram,
    notifications: Family<[(&'static str, &'static str); 1], Counter>,
    notifications_pending: Gauge,
    per_job: Arc<PerJob>,
}

/// What one job did (one record a job, whatever it did).
#[derive(Debug, Default)]
struct JobCounts {
    /// Ended runs by [`RESULTS`].
    results: [u64; 4],
    /// Runs by duration bucket ([`DURATION_BOUNDS`], then +Inf), not cumulative.
    durations: [u64; 11],
    duration_sum: f64,
    restarts: u64,
    log_bytes: u64,
    cpu_ms: u64,
    queued: u64,
    dead: u64,
    queue_depth: u32,
    /// When the oldest request that may start now was queued (ms).
    oldest_ms: Option<i64>,
}

/// Every job's record, by type and name.
#[derive(Debug, Default)]
struct PerJob {
    continuous: Mutex<BTreeMap<Box<str>, JobCounts>>,
    triggered: Mutex<BTreeMap<Box<str>, JobCounts>>,
}

impl PerJob {
    fn with(&self, kind: &str, job: &str, change: impl FnOnce(&mut JobCounts)) {
        let map = if kind == "continuous" { &self.continuous } else { &self.triggered };
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(job) {
            Some(counts) => change(counts),
            None => change(map.entry(job.into()).or_default()),
        }
    }
}

/// One per-job series: its name, help, type, and the value of a job's record (`None`: no sample).
type Series = (&'static str, &'static str, MetricType, fn(&JobCounts) -> Option<Value>);

enum Value {
    Counter(u64),
    Seconds(f64),
    Gauge(i64),
    AgeSince(i64),
}

const SERIES: [Series; 7] = [
    ("restarts", "Restarts of continuous jobs", MetricType::Counter, |c| nonzero(c.restarts)),
    ("log_bytes", "Bytes of job output written to logs", MetricType::Counter, |c| nonzero(c.log_bytes)),
    ("cpu_seconds", "CPU time of ended runs and processes, from their cgroups", MetricType::Counter, |c| {
        (c.cpu_ms > 0).then(|| Value::Seconds(c.cpu_ms as f64 / 1000.0))
    }),
    ("queued", "Run requests queued", MetricType::Counter, |c| nonzero(c.queued)),
    ("dead", "Run requests that went dead (no attempt left)", MetricType::Counter, |c| nonzero(c.dead)),
    ("queue_depth", "Run requests waiting in a job's queue", MetricType::Gauge, |c| {
        (c.queue_depth > 0).then_some(Value::Gauge(c.queue_depth as i64))
    }),
    (
        "queue_oldest_age_seconds",
        "Age of the oldest request of a job's queue that may start now",
        MetricType::Gauge,
        |c| c.oldest_ms.map(Value::AgeSince),
    ),
];

fn nonzero(n: u64) -> Option<Value> {
    (n > 0).then_some(Value::Counter(n))
}

impl Collector for PerJob {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let continuous = self.continuous.lock().unwrap_or_else(|e| e.into_inner());
        let triggered = self.triggered.lock().unwrap_or_else(|e| e.into_inner());
        let all = || {
            continuous
                .iter()
                .map(|(job, c)| ("continuous", job, c))
                .chain(triggered.iter().map(|(j, c)| ("triggered", j, c)))
        };
        let now = jiff::Timestamp::now().as_millisecond();
        // Runs by result, then their durations (triggered jobs only).
        if triggered.values().any(|c| c.results.iter().any(|n| *n > 0)) {
            let mut family =
                encoder.encode_descriptor("runs", "Finished triggered runs by result", None, MetricType::Counter)?;
            for (job, c) in triggered.iter() {
                for (result, n) in RESULTS.iter().zip(c.results).filter(|(_, n)| *n > 0) {
                    let labels = [("type", "triggered"), ("job", job), ("result", result)];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "run_duration_seconds",
                "Duration of triggered runs",
                None,
                MetricType::Histogram,
            )?;
            for (job, c) in triggered.iter().filter(|(_, c)| c.durations.iter().any(|n| *n > 0)) {
                let labels = [("type", "triggered"), ("job", job)];
                let buckets: Vec<(f64, u64)> =
                    DURATION_BOUNDS.iter().copied().chain([f64::INFINITY]).zip(c.durations).collect();
                let count = c.durations.iter().sum();
                family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(c.duration_sum, count, &buckets, None)?;
            }
        }
        for (name, help, kind, value) in SERIES {
            if !all().any(|(_, _, c)| value(c).is_some()) {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (kind, job, c) in all() {
                let Some(v) = value(c) else { continue };
                let labels = [("type", kind), ("job", &**job)];
                let sample = family.encode_family(&labels)?;
                match v {
                    Value::Counter(n) => ConstCounter::new(n).encode(sample)?,
                    Value::Seconds(s) => ConstCounter::new(s).encode(sample)?,
                    Value::Gauge(n) => ConstGauge::new(n).encode(sample)?,
                    Value::AgeSince(ms) => ConstGauge::new((now - ms).max(0) as f64 / 1000.0).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("webjobs")),
            jobs: Family::default(),
            schedule_delay: delay_histogram(),
            notifications: Family::default(),
            notifications_pending: Gauge::default(),
            per_job: Arc::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register("jobs", "Jobs by type and status", m.jobs.clone());
            r.register(
                "schedule_delay_seconds",
                "Delay between a schedule tick and the start of its run",
                m.schedule_delay.clone(),
            );
            r.register("notifications", "Notifications delivered or given up", m.notifications.clone());
            r.register("notifications_pending", "Notifications waiting in the outbox", m.notifications_pending.clone());
            r.register_collector(Box::new(m.per_job.clone()));
        }
        m
    }

    pub fn run_finished(&self, job: &str, result: &'static str, duration: Duration) {
        let seconds = duration.as_secs_f64();
        self.per_job.with("triggered", job, |c| {
            if let Some(i) = RESULTS.iter().position(|r| *r == result) {
                c.results[i] += 1;
            }
            let bucket = DURATION_BOUNDS.iter().position(|b| seconds <= *b).unwrap_or(DURATION_BOUNDS.len());
            c.durations[bucket] += 1;
            c.duration_sum += seconds;
        });
    }

    pub fn restarted(&self, job: &str) {
        self.per_job.with("continuous", job, |c| c.restarts += 1);
    }

    pub fn tick_started(&self, delay: Duration) {
        self.schedule_delay.observe(delay.as_secs_f64());
    }

    /// CPU time of a run or process that ended (known only with cgroups).
    pub fn cpu_used(&self, kind: &'static str, job: &str, cpu_ms: Option<u64>) {
        if let Some(ms) = cpu_ms {
            self.per_job.with(kind, job, |c| c.cpu_ms += ms);
        }
    }

    pub fn output(&self, kind: &'static str, job: &str, bytes: u64) {
        if bytes > 0 {
            self.per_job.with(kind, job, |c| c.log_bytes += bytes);
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
        self.per_job.with("triggered", job, |c| c.queued += 1);
    }

    pub fn dead(&self, job: &str) {
        self.per_job.with("triggered", job, |c| c.dead += 1);
    }

    /// A job's queue holds `depth` requests; the oldest that may start was
    /// queued at `oldest_ms`.
    pub fn queue_depth(&self, job: &str, depth: u32, oldest_ms: Option<i64>) {
        self.per_job.with("triggered", job, |c| (c.queue_depth, c.oldest_ms) = (depth, oldest_ms));
    }

    /// The text exposition, with the jobs gauge set from `counts` (type, status, n).
    pub fn render(&self, counts: &[(String, String, i64)]) -> String {
        self.jobs.clear();
        for (kind, status, n) in counts {
            self.jobs.get_or_create(&[("type", kind.clone()), ("status", status.clone())]).set(*n);
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

    #[test]
    fn per_job_series_keep_their_names_labels_and_buckets() {
        let m = Metrics::new();
        m.run_finished("nightly", "Success", Duration::from_millis(1500));
        m.run_finished("nightly", "Success", Duration::from_millis(5));
        m.run_finished("nightly", "Failed", Duration::from_secs(5000));
        m.cpu_used("triggered", "nightly", Some(1250));
        m.queued("nightly");
        m.queue_depth("nightly", 2, Some(jiff::Timestamp::now().as_millisecond() - 3000));
        m.queue_depth("idle", 0, None);
        let text = m.render(&[]);
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        has("# TYPE webjobs_runs counter");
        has("webjobs_runs_total{type=\"triggered\",job=\"nightly\",result=\"Success\"} 2");
        has("webjobs_runs_total{type=\"triggered\",job=\"nightly\",result=\"Failed\"} 1");
        has("# TYPE webjobs_run_duration_seconds histogram");
        has("webjobs_run_duration_seconds_count{type=\"triggered\",job=\"nightly\"} 3");
        has("webjobs_run_duration_seconds_bucket{le=\"0.01\",type=\"triggered\",job=\"nightly\"} 1");
        has("webjobs_run_duration_seconds_bucket{le=\"2.56\",type=\"triggered\",job=\"nightly\"} 2");
        has("webjobs_run_duration_seconds_bucket{le=\"2621.44\",type=\"triggered\",job=\"nightly\"} 2");
        has("webjobs_run_duration_seconds_bucket{le=\"+Inf\",type=\"triggered\",job=\"nightly\"} 3");
        has("webjobs_cpu_seconds_total{type=\"triggered\",job=\"nightly\"} 1.25");
        has("webjobs_queued_total{type=\"triggered\",job=\"nightly\"} 1");
        has("webjobs_queue_depth{type=\"triggered\",job=\"nightly\"} 2");
        let age = text
            .lines()
            .find_map(|l| l.strip_prefix("webjobs_queue_oldest_age_seconds{type=\"triggered\",job=\"nightly\"} "));
        let age: f64 = age.expect("an age").parse().unwrap();
        assert!((3.0..10.0).contains(&age), "{age}");
        // A job that did nothing has no sample; a series nobody has is not described.
        assert!(!text.contains("job=\"idle\""), "{text}");
        assert!(!text.contains("webjobs_restarts"), "{text}");
        assert!(!text.contains("webjobs_dead"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
