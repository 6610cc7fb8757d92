//! `settings.job`: the per-job settings file, read and validated in one pass.
//!
//! WebJobs silently ignores a bad file; we never do. Every problem names the
//! file, the key and what was expected; unknown keys are warnings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::key::JobKind;
use crate::problems::{Problem, Reader, parse_object};
use crate::schedule::Schedule;

/// The file name, in the job's script folder.
use crate::layout::SETTINGS_FILE;

/// What a triggered job does when a tick or request comes while a run is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    Skip,
    Queue,
    Replace,
}

/// Which missed schedule ticks run after the daemon was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    None,
    /// The most recent missed tick, however old.
    Last,
    /// The most recent missed tick if at most this old (WebJobs: 10 minutes).
    MaxAge(Duration),
}

/// `run_mode`, as newer WebJobs accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    Continuous,
    Scheduled,
    OnDemand,
}

/// `"trigger": {"inbox": DIR, "pattern": "*.csv", "scan_interval": 5}`.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxTrigger {
    /// As written: relative to the data folder, or absolute.
    pub inbox: String,
    pub pattern: String,
    /// How often the folder is read besides inotify (NFS, lost events).
    pub scan_interval: Duration,
}

/// Validated settings of one job, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub schedule: Option<Schedule>,
    pub is_singleton: bool,
    pub stopping_wait_time: Duration,
    /// `None` = the script host decides (`.js` runs in place).
    pub is_in_place: Option<bool>,
    pub timezone: Option<String>,
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retries: u32,
    pub retry_delay: Duration,
    /// The longest back-off between attempts (the delay doubles per attempt).
    pub max_retry_delay: Duration,
    /// How long a dedup key stays held after its request ended.
    pub dedup_window: Duration,
    /// Runs of the job active at once, across daemons (Kudu: 1).
    pub max_parallel: u32,
    /// A run per file that lands in a folder (see [`crate::inbox`]).
    /// Boxed: most jobs have none.
    pub trigger: Option<Box<InboxTrigger>>,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub restart_delay: Duration,
    pub max_restart_delay: Duration,
    /// When a continuous job is in a crash loop, and when it has recovered.
    pub crash_loop: CrashLoop,
    /// Triggered jobs run after this one's request ends (`then`).
    pub then: Then,
    pub env: BTreeMap<String, String>,
    pub run_mode: RunMode,
    /// `memory_max`, `cpu_max`, `tasks_max`: the run's cgroup limits.
    /// Boxed: most jobs set none.
    pub limits: Option<Box<crate::cgroup::Limits>>,
    /// Who hears about the job's runs (`notify`; see [`crate::notify`]).
    pub notify: Vec<crate::notify::Rule>,
    /// The file's object as written (compact JSON text), for the settings
    /// API: a few dozen bytes where the parsed object took a B-tree node.
    pub raw: std::sync::Arc<str>,
}

/// The outcome of reading a `settings.job`: the settings or every error, and
/// the warnings either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// Shared with the job's actor (`Runnable`): one copy per job.
    pub settings: Result<std::sync::Arc<Settings>, Vec<Problem>>,
    pub warnings: Vec<Problem>,
}

const KNOWN_KEYS: &str = "schedule, is_singleton, stopping_wait_time, is_in_place, timezone, timeout, \
    idle_timeout, retries, retry_delay, max_retry_delay, dedup_window, max_parallel, trigger, overlap, catch_up, restart_delay, max_restart_delay, crash_loop, then, env, run_mode, \
    memory_max, cpu_max, tasks_max, notify";

/// The largest `settings.job` read (a bigger one is an error, not a memory hog).
pub const MAX_FILE: u64 = 1024 * 1024;

impl Settings {
    /// Defaults for a job without `settings.job`.
    pub fn defaults(kind: JobKind) -> Settings {
        Settings {
            schedule: None,
            is_singleton: false,
            stopping_wait_time: Duration::from_secs(match kind {
                JobKind::Continuous => 5,
                JobKind::Triggered => 30,
            }),
            is_in_place: None,
            timezone: None,
            timeout: None,
            idle_timeout: None,
            retries: 0,
            retry_delay: Duration::from_secs(60),
            max_retry_delay: Duration::from_secs(3600),
            dedup_window: Duration::ZERO,
            max_parallel: 1,
            trigger: None,
            overlap: Overlap::Skip,
            catch_up: CatchUp::MaxAge(Duration::from_secs(600)),
            restart_delay: Duration::from_millis(500),
            max_restart_delay: Duration::from_secs(60),
            crash_loop: CrashLoop::default(),
            then: Then::default(),
            env: BTreeMap::new(),
            run_mode: match kind {
                JobKind::Continuous => RunMode::Continuous,
                JobKind::Triggered => RunMode::OnDemand,
            },
            limits: None,
            notify: Vec::new(),
            raw: "{}".into(),
        }
    }
}

/// Reads `settings.job` in `dir` (defaults when it does not exist).
pub fn load(dir: &Path, kind: JobKind) -> Loaded {
    let file = dir.join(SETTINGS_FILE);
    match read_small_file(&file, MAX_FILE) {
        Ok(text) => parse(&file, &text, kind),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Loaded { settings: Ok(shared(kind, Settings::defaults(kind))), warnings: Vec::new() }
        }
        Err(e) => Loaded {
            settings: Err(vec![Problem { file, key: String::new(), message: format!("cannot read the file: {e}") }]),
            warnings: Vec::new(),
        },
    }
}

/// Reads a small text file that must be a regular file: opened without
/// blocking (a FIFO named like it never blocks the daemon), refused when it is
/// anything else (a device such as `/dev/zero`, a FIFO, a folder) or larger
/// than `max` bytes.
pub fn read_small_file(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "not a regular file (a {}); settings.job must be a plain JSON file",
            kind_of_file(&meta)
        )));
    }
    if meta.len() > max {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than the {max} bytes a settings file may have",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("more than the {max} bytes a settings file may have")));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8 text"))
}

fn kind_of_file(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "folder"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Parses and validates the text of a `settings.job`. A UTF-8 byte order
/// mark (Windows editors write one; WebJobs accepts it) is skipped.
pub fn parse(file: &Path, text: &str, kind: JobKind) -> Loaded {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let map = match parse_object(file, text) {
        Ok(map) => map,
        Err(p) => {
            return Loaded { settings: Err(vec![p]), warnings: Vec::new() };
        }
    };
    let mut s = Settings::defaults(kind);
    let mut r = Reader::new(file, &map);
    read_webjobs_keys(&mut r, &mut s);
    read_extensions(&mut r, &mut s);
    read_run_mode(&mut r, &mut s, kind);
    let mut warnings = type_warnings(file, &map, kind);
    for key in r.unknown_keys() {
        warnings.push(Problem {
            file: file.to_path_buf(),
            key,
            message: format!("unknown key, ignored (known keys: {KNOWN_KEYS})"),
        });
    }
    let problems = r.into_problems();
    if !problems.is_empty() {
        return Loaded { settings: Err(problems), warnings };
    }
    s.raw = serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_string()).into();
    Loaded { settings: Ok(shared(kind, s)), warnings }
}

/// The settings in use, by kind and compact text, so that jobs whose
/// `settings.job` says the same (or that have none) share one copy: parsed
/// settings take about 550 bytes a job.
#[derive(Default)]
struct InUse {
    by_text: std::collections::HashMap<(JobKind, std::sync::Arc<str>), std::sync::Weak<Settings>>,
    /// Entries no job uses any more are forgotten when the table grows past this.
    sweep_at: usize,
}

/// `settings`, or an equal copy already in use.
fn shared(kind: JobKind, settings: Settings) -> std::sync::Arc<Settings> {
    static IN_USE: std::sync::LazyLock<std::sync::Mutex<InUse>> = std::sync::LazyLock::new(Default::default);
    let mut in_use = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let key = (kind, settings.raw.clone());
    if let Some(existing) = in_use.by_text.get(&key).and_then(std::sync::Weak::upgrade)
        && *existing == settings
    {
        return existing;
    }
    if in_use.by_text.len() >= in_use.sweep_at {
        in_use.by_text.retain(|_, settings| settings.strong_count() > 0);
        in_use.sweep_at = (in_use.by_text.len() * 2).max(64);
    }
    let settings = std::sync::Arc::new(settings);
    in_use.by_text.insert(key, std::sync::Arc::downgrade(&settings));
    settings
}

fn read_webjobs_keys<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    if let Some(expr) = r.string("schedule") {
        match Schedule::parse(expr) {
            Ok(schedule) => s.schedule = Some(schedule),
            Err(e) => r.problem("schedule", e.to_string()),
        }
    }
    if let Some(b) = r.bool("is_singleton") {
        s.is_singleton = b;
    }
    if let Some(n) = r.integer("stopping_wait_time", 0, 86_400 * 7) {
        s.stopping_wait_time = Duration::from_secs(n);
    }
    if let Some(b) = r.bool("is_in_place") {
        s.is_in_place = Some(b);
    }
}

fn read_extensions<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    s.notify = crate::notify::read_rules(r, "notify");
    if let Some(tz) = r.string("timezone") {
        match jiff::tz::TimeZone::get(tz) {
            Ok(_) => s.timezone = Some(tz.to_string()),
            Err(_) => r.problem(
                "timezone",
                format!("unknown time zone \"{tz}\" (expected an IANA name such as \"Europe/Paris\")"),
            ),
        }
    }
    s.timeout = positive(r, "timeout");
    s.idle_timeout = positive(r, "idle_timeout");
    if let Some(n) = r.integer("retries", 0, 1000) {
        s.retries = n as u32;
    }
    if let Some(d) = r.seconds("retry_delay") {
        s.retry_delay = d;
    }
    if let Some(d) = r.seconds("max_retry_delay") {
        s.max_retry_delay = d;
        if d < s.retry_delay {
            r.problem("max_retry_delay", "must not be smaller than retry_delay");
        }
    }
    if let Some(d) = r.seconds("dedup_window") {
        s.dedup_window = d;
    }
    if let Some(n) = r.integer("max_parallel", 1, 1000) {
        s.max_parallel = n as u32;
    }
    s.overlap = match r.choice("overlap", &["skip", "queue", "replace"]) {
        Some("queue") => Overlap::Queue,
        Some("replace") => Overlap::Replace,
        _ => Overlap::Skip,
    };
    read_catch_up(r, s);
    read_trigger(r, s);
    read_crash_loop(r, s);
    read_then(r, s);
    if let Some(d) = r.seconds("restart_delay") {
        s.restart_delay = d;
    }
    if let Some(d) = r.seconds("max_restart_delay") {
        s.max_restart_delay = d;
    }
    if s.max_restart_delay < s.restart_delay && r.value("max_restart_delay").is_some() {
        r.problem("max_restart_delay", "must not be smaller than restart_delay");
    }
    read_env(r, s);
    read_limits(r, s);
}

/// `memory_max` (bytes, or a string with K, M, G), `cpu_max` (CPUs, e.g. 0.5),
/// `tasks_max` (processes and threads).
fn read_limits<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    let mut limits = crate::cgroup::Limits::default();
    match r.value("memory_max") {
        None => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|b| b >= 4096) => limits.memory_max = n.as_u64(),
        Some(Value::String(text)) => match parse_bytes(text) {
            Some(b) if b >= 4096 => limits.memory_max = Some(b),
            _ => r.problem(
                "memory_max",
                format!("expected bytes (at least 4096) or a size such as \"512M\" or \"2G\", found \"{text}\""),
            ),
        },
        Some(other) => r.problem("memory_max", format!("expected bytes or a size such as \"512M\", found {other}")),
    }
    match r.value("cpu_max") {
        None => {}
        Some(Value::Number(n)) if n.as_f64().is_some_and(|c| c > 0.0 && c <= 4096.0) => limits.cpu_max = n.as_f64(),
        Some(other) => {
            r.problem("cpu_max", format!("expected a number of CPUs above 0, such as 0.5 or 2, found {other}"))
        }
    }
    if let Some(n) = r.integer("tasks_max", 1, 4_194_304) {
        limits.tasks_max = Some(n);
    }
    if limits != crate::cgroup::Limits::default() {
        s.limits = Some(Box::new(limits));
    }
}

/// `512M`, `2G`, `64K`, `1048576` (powers of 1024).
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A duration that must be above zero when given.
fn positive<'a>(r: &mut Reader<'a>, key: &'a str) -> Option<Duration> {
    let d = r.seconds(key)?;
    if d.is_zero() {
        r.problem(key, "expected a number of seconds above 0 (leave the key out for no limit)");
        return None;
    }
    Some(d)
}

fn read_catch_up<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    let Some(value) = r.value("catch_up") else {
        return;
    };
    s.catch_up = match value {
        Value::String(v) if v == "none" => CatchUp::None,
        Value::String(v) if v == "last" => CatchUp::Last,
        Value::Number(_) => match r.seconds("catch_up") {
            Some(d) => CatchUp::MaxAge(d),
            None => return,
        },
        _ => {
            r.problem("catch_up", format!("expected \"none\", \"last\" or a maximum age in seconds, found {value}"));
            return;
        }
    };
}

/// A continuous job is in a crash loop after `restarts` restarts `within` a
/// window; it has recovered once a process has run `recovered_after` since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    pub restarts: u32,
    pub within: Duration,
    pub recovered_after: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop { restarts: 5, within: Duration::from_secs(600), recovered_after: Duration::from_secs(60) }
    }
}

fn read_crash_loop<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    let Some(map) = r.object("crash_loop") else { return };
    let mut cr = Reader::nested(r.file(), "crash_loop".into(), map);
    if let Some(n) = cr.integer("restarts", 2, 1_000_000) {
        s.crash_loop.restarts = n as u32;
    }
    if let Some(d) = cr.seconds("within") {
        s.crash_loop.within = d;
    }
    if let Some(d) = cr.seconds("recovered_after") {
        s.crash_loop.recovered_after = d;
    }
    cr.deny_unknown("restarts, within, recovered_after");
    r.absorb(cr);
}

/// The triggered jobs a request's end starts (`then`): on success (after
/// its retries), on failure (dead), and either way. Boxed: few jobs chain
/// others, and a job without `then` keeps a pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Then(Option<Box<ThenLists>>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ThenLists {
    success: Vec<String>,
    failure: Vec<String>,
    always: Vec<String>,
}

impl Then {
    /// The jobs to start after a request that `succeeded` (or went dead).
    pub fn children(&self, succeeded: bool) -> impl Iterator<Item = &String> {
        self.0.iter().flat_map(move |l| if succeeded { &l.success } else { &l.failure }.iter().chain(&l.always))
    }

    /// Every job named.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.0.iter().flat_map(|l| l.success.iter().chain(&l.failure).chain(&l.always))
    }
}

fn read_then<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    let Some(map) = r.object("then") else { return };
    for (key, value) in map {
        let lists = s.then.0.get_or_insert_with(Default::default);
        let list = match key.as_str() {
            "success" => &mut lists.success,
            "failure" => &mut lists.failure,
            "always" => &mut lists.always,
            other => {
                r.problem(&format!("then.{other}"), "unknown key (expected success, failure, always)");
                continue;
            }
        };
        let names: Option<Vec<String>> = match value {
            Value::Array(items) => items.iter().map(|v| v.as_str().map(str::to_string)).collect(),
            Value::String(name) => Some(vec![name.clone()]),
            _ => None,
        };
        match names {
            Some(names) if names.iter().all(|n| crate::key::valid_name(n)) => *list = names,
            _ => r.problem(&format!("then.{key}"), "expected a list of triggered job names, such as [\"report\"]"),
        }
    }
}

fn read_trigger<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    let Some(map) = r.object("trigger") else { return };
    let mut trigger = InboxTrigger { inbox: String::new(), pattern: "*".into(), scan_interval: Duration::from_secs(5) };
    for (key, value) in map {
        match (key.as_str(), value) {
            ("inbox", Value::String(dir)) if !dir.trim().is_empty() && !dir.contains('\0') => {
                trigger.inbox = dir.clone()
            }
            ("pattern", Value::String(p)) if !p.is_empty() && !p.contains('/') => trigger.pattern = p.clone(),
            ("scan_interval", Value::Number(n)) if n.as_f64().is_some_and(|n| n > 0.0 && n <= 86_400.0) => {
                trigger.scan_interval = Duration::from_secs_f64(n.as_f64().unwrap_or(5.0));
            }
            ("inbox", v) => r.problem(
                "trigger.inbox",
                format!("expected a folder (relative to the data folder, or absolute), found {v}"),
            ),
            ("pattern", v) => {
                r.problem("trigger.pattern", format!("expected a file name pattern such as \"*.csv\", found {v}"))
            }
            ("scan_interval", v) => {
                r.problem("trigger.scan_interval", format!("expected seconds (> 0, at most a day), found {v}"))
            }
            (other, _) => {
                r.problem(&format!("trigger.{other}"), "unknown key (expected inbox, pattern, scan_interval)")
            }
        }
    }
    if trigger.inbox.is_empty() {
        if !map.contains_key("inbox") {
            r.problem("trigger.inbox", "missing: the folder whose files trigger runs");
        }
        return;
    }
    s.trigger = Some(Box::new(trigger));
}

fn read_env<'a>(r: &mut Reader<'a>, s: &mut Settings) {
    let Some(map) = r.object("env") else { return };
    for (name, value) in map {
        let key = format!("env.{name}");
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            r.problem(&key, "an environment variable name cannot be empty or contain `=`");
            continue;
        }
        if name.starts_with("WEBJOBS_") {
            r.problem(&key, "names starting with WEBJOBS_ are set by the daemon and cannot be overridden");
            continue;
        }
        let text = match value {
            Value::String(v) => v.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                r.problem(&key, format!("expected a string, found {}", crate::problems::kind_of(other)));
                continue;
            }
        };
        if text.contains('\0') {
            r.problem(&key, "a value cannot contain a NUL character");
            continue;
        }
        s.env.insert(name.clone(), text);
    }
}

fn read_run_mode<'a>(r: &mut Reader<'a>, s: &mut Settings, kind: JobKind) {
    let mode = match r.choice("run_mode", &["continuous", "scheduled", "on_demand"]) {
        Some("continuous") => RunMode::Continuous,
        Some("scheduled") => RunMode::Scheduled,
        Some("on_demand") => RunMode::OnDemand,
        _ => {
            if kind == JobKind::Triggered && s.schedule.is_some() {
                s.run_mode = RunMode::Scheduled;
            }
            return;
        }
    };
    match (kind, mode) {
        (JobKind::Continuous, RunMode::Continuous) | (JobKind::Triggered, RunMode::OnDemand) => {}
        (JobKind::Triggered, RunMode::Scheduled) if s.schedule.is_some() => {}
        (JobKind::Triggered, RunMode::Scheduled) => {
            r.problem("run_mode", "\"scheduled\" needs a `schedule` key");
        }
        (JobKind::Continuous, _) => r.problem(
            "run_mode",
            format!("this job is in jobs/continuous/, so run_mode must be \"continuous\"; move it to jobs/triggered/ to run it {}", if mode == RunMode::Scheduled { "on a schedule" } else { "on demand" }),
        ),
        (JobKind::Triggered, RunMode::Continuous) => r.problem(
            "run_mode",
            "this job is in jobs/triggered/, so run_mode cannot be \"continuous\"; move it to jobs/continuous/",
        ),
    }
    s.run_mode = mode;
}

/// Keys that are valid but mean nothing for this kind of job.
fn type_warnings(file: &Path, map: &Map<String, Value>, kind: JobKind) -> Vec<Problem> {
    let ignored: &[&str] = match kind {
        JobKind::Continuous => &[
            "schedule",
            "timeout",
            "idle_timeout",
            "retries",
            "retry_delay",
            "max_retry_delay",
            "dedup_window",
            "overlap",
            "catch_up",
            "timezone",
        ],
        JobKind::Triggered => &["is_singleton", "restart_delay", "max_restart_delay"],
    };
    ignored
        .iter()
        .filter(|k| map.contains_key(**k))
        .map(|k| Problem {
            file: file.to_path_buf(),
            key: k.to_string(),
            message: format!("has no effect on a {} job, ignored", kind.as_str()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_whose_settings_say_the_same_share_one_copy() {
        let read = |text: &str, kind| parse(Path::new("settings.job"), text, kind).settings.unwrap();
        let a = read(r#"{"schedule": "7 * * * * *", "timeout": 60}"#, JobKind::Triggered);
        // The same object, written differently: one copy.
        let b = read("{\n  \"timeout\": 60,\n  \"schedule\": \"7 * * * * *\"\n}", JobKind::Triggered);
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        // Another value, or the same text for the other kind of job: copies of their own.
        let c = read(r#"{"schedule": "8 * * * * *", "timeout": 60}"#, JobKind::Triggered);
        assert!(!std::sync::Arc::ptr_eq(&a, &c) && c.schedule != a.schedule);
        let continuous = read("{}", JobKind::Continuous);
        let triggered = read("{}", JobKind::Triggered);
        assert!(!std::sync::Arc::ptr_eq(&continuous, &triggered));
        assert_eq!(continuous.run_mode, RunMode::Continuous);
        assert_eq!(triggered.run_mode, RunMode::OnDemand);
        // Once no job holds them, settings are made afresh (and equal).
        let kept = (*a).clone();
        drop((a, b));
        assert_eq!(*read(r#"{"schedule": "7 * * * * *", "timeout": 60}"#, JobKind::Triggered), kept);
    }

    #[test]
    fn limits_are_read_with_units() {
        let s = parse(
            Path::new("settings.job"),
            r#"{"memory_max": "512M", "cpu_max": 0.5, "tasks_max": 64}"#,
            JobKind::Triggered,
        )
        .settings
        .unwrap();
        assert_eq!(
            s.limits.as_deref(),
            Some(&crate::cgroup::Limits { memory_max: Some(512 << 20), cpu_max: Some(0.5), tasks_max: Some(64) })
        );
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("64KiB"), Some(64 << 10));
        let bad = parse(
            Path::new("settings.job"),
            r#"{"memory_max": "lots", "cpu_max": -1, "tasks_max": 0}"#,
            JobKind::Triggered,
        );
        let keys: Vec<String> = bad.settings.unwrap_err().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["memory_max", "cpu_max", "tasks_max"]);
    }

    #[test]
    fn queue_and_trigger_settings_are_read_and_checked() {
        let s = parse(
            Path::new("settings.job"),
            r#"{"trigger": {"inbox": "in", "pattern": "*.csv"}, "max_parallel": 4, "dedup_window": 60,
               "retry_delay": 10, "max_retry_delay": 300}"#,
            JobKind::Triggered,
        )
        .settings
        .unwrap();
        let t = *s.trigger.clone().unwrap();
        assert_eq!((t.inbox.as_str(), t.pattern.as_str(), t.scan_interval), ("in", "*.csv", Duration::from_secs(5)));
        assert_eq!(
            (s.max_parallel, s.dedup_window, s.max_retry_delay),
            (4, Duration::from_secs(60), Duration::from_secs(300))
        );
        let bad = parse(
            Path::new("settings.job"),
            r#"{"trigger": {"pattern": "a/b", "scan_interval": 0, "watch": true}, "max_parallel": 0,
               "retry_delay": 10, "max_retry_delay": 5}"#,
            JobKind::Triggered,
        );
        let mut keys: Vec<String> = bad.settings.unwrap_err().into_iter().map(|p| p.key).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "max_parallel",
                "max_retry_delay",
                "trigger.inbox",
                "trigger.pattern",
                "trigger.scan_interval",
                "trigger.watch"
            ]
        );
        let not_an_object = parse(Path::new("settings.job"), r#"{"trigger": "inbox"}"#, JobKind::Triggered);
        assert!(not_an_object.settings.is_err());
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let loaded = parse(Path::new("settings.job"), "\u{feff}{\"stopping_wait_time\": 7}", JobKind::Continuous);
        assert_eq!(loaded.settings.unwrap().stopping_wait_time, Duration::from_secs(7));
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("settings.job");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = read_small_file(&fifo, MAX_FILE).unwrap_err().to_string();
        assert!(err.contains("not a regular file (a FIFO)"), "{err}");
        let err = read_small_file(Path::new("/dev/zero"), MAX_FILE).unwrap_err().to_string();
        assert!(err.contains("(a device)"), "{err}");
        let big = d.path().join("big.job");
        std::fs::write(&big, vec![b' '; 2 * MAX_FILE as usize]).unwrap();
        assert!(read_small_file(&big, MAX_FILE).unwrap_err().to_string().contains("more than"));
    }

    /// Settings and warnings, or the errors.
    #[derive(Debug)]
    struct Parsed {
        settings: Settings,
        warnings: Vec<Problem>,
    }
    fn split(l: Loaded) -> Result<Parsed, Vec<Problem>> {
        l.settings.map(|settings| Parsed { settings: (*settings).clone(), warnings: l.warnings })
    }
    fn parse_c(text: &str) -> Result<Parsed, Vec<Problem>> {
        split(parse(Path::new("jobs/continuous/a/settings.job"), text, JobKind::Continuous))
    }
    fn parse_t(text: &str) -> Result<Parsed, Vec<Problem>> {
        split(parse(Path::new("jobs/triggered/a/settings.job"), text, JobKind::Triggered))
    }
    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn defaults_follow_webjobs() {
        assert_eq!(Settings::defaults(JobKind::Continuous).stopping_wait_time, Duration::from_secs(5));
        assert_eq!(Settings::defaults(JobKind::Triggered).stopping_wait_time, Duration::from_secs(30));
        let s = parse_c("{}").unwrap().settings;
        assert!(!s.is_singleton);
        assert_eq!(s.is_in_place, None);
    }

    #[test]
    fn all_keys_are_read() {
        let t = parse_t(
            r#"{"schedule": "0 */15 * * * *", "stopping_wait_time": 10, "is_in_place": true,
                "timezone": "Europe/Paris", "timeout": 90, "idle_timeout": 30.5, "retries": 2,
                "retry_delay": 5, "overlap": "queue", "catch_up": "last", "env": {"A": "1", "B": 2},
                "run_mode": "scheduled"}"#,
        )
        .unwrap();
        let s = t.settings;
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(s.stopping_wait_time, Duration::from_secs(10));
        assert_eq!(s.timeout, Some(Duration::from_secs(90)));
        assert_eq!(s.idle_timeout, Some(Duration::from_millis(30_500)));
        assert_eq!((s.retries, s.overlap, s.catch_up), (2, Overlap::Queue, CatchUp::Last));
        assert_eq!(s.env["B"], "2");
        assert_eq!(s.run_mode, RunMode::Scheduled);
        let c = parse_c(r#"{"is_singleton": true, "restart_delay": 0.25, "max_restart_delay": 10}"#).unwrap();
        assert!(c.settings.is_singleton);
        assert_eq!(c.settings.restart_delay, Duration::from_millis(250));
    }

    #[test]
    fn invalid_json_names_the_position() {
        let e = parse_c("{\"is_singleton\": tru}").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].message.starts_with("invalid JSON at line 1"), "{}", e[0].message);
        assert!(e[0].to_string().starts_with("jobs/continuous/a/settings.job: "));
    }

    #[test]
    fn wrong_types_are_errors_not_silently_ignored() {
        let e = parse_c(r#"{"is_singleton": "true", "stopping_wait_time": "60", "is_in_place": 1, "env": []}"#)
            .unwrap_err();
        assert_eq!(keys(&e), vec!["is_singleton", "stopping_wait_time", "is_in_place", "env"]);
        assert!(e[1].message.contains("found a string (\"60\")"), "{}", e[1].message);
    }

    #[test]
    fn negative_and_fractional_times_are_errors() {
        let e = parse_c(r#"{"stopping_wait_time": -1, "restart_delay": -0.5}"#).unwrap_err();
        assert_eq!(keys(&e), vec!["stopping_wait_time", "restart_delay"]);
        let e = parse_c(r#"{"stopping_wait_time": 2.5}"#).unwrap_err();
        assert!(e[0].message.contains("whole number"));
        let e = parse_t(r#"{"timeout": 0}"#).unwrap_err();
        assert!(e[0].message.contains("above 0"));
    }

    #[test]
    fn bad_schedule_names_the_field() {
        let e = parse_t(r#"{"schedule": "0 61 * * * *"}"#).unwrap_err();
        assert_eq!(e[0].key, "schedule");
        assert!(e[0].message.contains("minute"), "{}", e[0].message);
    }

    #[test]
    fn bad_enums_list_the_choices() {
        let e = parse_t(
            r#"{"overlap": "parallel", "catch_up": true, "run_mode": "sometimes", "timezone": "Nowhere/City"}"#,
        )
        .unwrap_err();
        assert_eq!(keys(&e), vec!["timezone", "overlap", "catch_up", "run_mode"]);
        assert!(e[1].message.contains("\"skip\", \"queue\" or \"replace\""));
    }

    #[test]
    fn run_mode_must_agree_with_the_folder() {
        let e = parse_c(r#"{"run_mode": "on_demand"}"#).unwrap_err();
        assert!(e[0].message.contains("jobs/continuous/"));
        assert!(parse_t(r#"{"run_mode": "scheduled"}"#).unwrap_err()[0].message.contains("schedule"));
        assert!(parse_t(r#"{"run_mode": "continuous"}"#).is_err());
    }

    #[test]
    fn unknown_and_inapplicable_keys_are_warnings() {
        let l = parse_c(r#"{"is_singelton": true, "schedule": "0 * * * * *"}"#).unwrap();
        let w = keys(&l.warnings);
        assert!(w.contains(&"is_singelton") && w.contains(&"schedule"), "{w:?}");
        assert!(!l.settings.is_singleton);
    }

    #[test]
    fn env_names_and_values_are_checked() {
        let e = parse_c(r#"{"env": {"A=B": "x", "C": null, "D": {"x": 1}, "WEBJOBS_NAME": "x"}}"#).unwrap_err();
        assert_eq!(keys(&e), vec!["env.A=B", "env.C", "env.D", "env.WEBJOBS_NAME"]);
    }

    #[test]
    fn restart_delays_must_be_ordered() {
        let e = parse_c(r#"{"restart_delay": 10, "max_restart_delay": 5}"#).unwrap_err();
        assert_eq!(keys(&e), vec!["max_restart_delay"]);
    }

    #[test]
    fn the_shipped_schema_describes_exactly_the_known_keys() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/settings/settings.job.schema.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut in_schema: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let mut known: Vec<&str> = KNOWN_KEYS.split(", ").map(str::trim).collect();
        in_schema.sort();
        known.sort();
        assert_eq!(in_schema, known);
    }
}
