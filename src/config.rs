//! The daemon configuration (`webjobs.json`): defaults, the file, the WebJobs
//! environment switches and command-line overrides, resolved into one value.
//!
//! Precedence, lowest first: built-in defaults, the config file, the
//! environment (`WEBJOBS_STOPPED`, `WEBJOBS_INSTANCE_ID`, …: an operator's
//! `Environment=` line or app setting wins over the shipped file), command-line
//! flags (`--root`, `--listen`). Every problem in the file or the environment
//! is reported at once. Paths are made absolute once, here: jobs run in other
//! folders and must be handed paths that do not depend on the daemon's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::problems::{Problem, Reader, parse_object};

/// Everything the daemon and the client commands need to know about paths and policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from, if any (re-read on SIGHUP).
    pub source: Option<PathBuf>,
    pub jobs_dir: PathBuf,
    pub data_dir: PathBuf,
    pub temp_dir: PathBuf,
    /// Short id of this daemon, written in every log line (`[time > id: INFO]`).
    pub instance_id: String,
    /// Quiet period after the last file event before jobs are reloaded.
    pub debounce: Duration,
    pub log: LogConfig,
    /// Per-extension overrides of the script hosts, e.g. `"py": ["/opt/py/bin/python3"]`.
    pub interpreters: BTreeMap<String, Vec<String>>,
    pub switches: Switches,
    /// IANA zone for schedules of jobs that set none (default: the machine's zone).
    pub timezone: Option<String>,
    /// How often an inactive instance retries a singleton job's lock.
    pub singleton_retry: Duration,
    pub api: ApiConfig,
    /// Put each run in a cgroup of its own when cgroup v2 allows it (`cgroups`, default true).
    pub cgroups: bool,
    /// Rules every job has besides its own (`notify`).
    pub notify: Vec<crate::notify::Rule>,
    /// The key of the notifications' HMAC-SHA256 signature (`notify_secret`); never shown.
    pub notify_secret: Option<String>,
    /// `coordination.postgres` (or `WEBJOBS_POSTGRES_URL`): daemons share
    /// leases, ticks and the queue through this database.
    pub postgres: Option<crate::coordination::postgres::PgSettings>,
}

/// The HTTP API and dashboard over TCP (the Unix socket is always on).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// `None` = no TCP listener. Default `127.0.0.1:8719`.
    pub listen: Option<String>,
    /// Basic credentials (WebJobs' deployment credentials), if configured.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Where the bearer token is kept (created at first start, mode 0600).
    pub token_file: PathBuf,
    /// Largest request body (a deployed zip or file).
    pub max_upload: u64,
    /// Largest payload of a run request.
    pub max_payload: u64,
    /// Largest total size a deployed zip may unpack to.
    pub max_unpacked: u64,
}

/// Log file policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Size at which `job_log.txt` is rotated.
    pub max_size: u64,
    /// How many rotated files (`job_log.1.txt` …) are kept.
    pub keep: u32,
    /// Longest line kept whole; longer output is split into lines of this size.
    pub max_line: usize,
}

/// WebJobs' global switches (§11 of the product contract).
#[derive(Debug, Clone, PartialEq)]
pub struct Switches {
    /// `WEBJOBS_STOPPED`: no job runs.
    pub stopped: bool,
    /// `WEBJOBS_DISABLE_SCHEDULE`: no schedule fires.
    pub disable_schedule: bool,
    /// `WEBJOBS_HISTORY_SIZE`: runs kept per triggered job.
    pub history_size: u32,
    /// `WEBJOBS_RESTART_TIME`: global cap on a continuous job's restart delay.
    pub restart_time: Option<Duration>,
    /// `WEBJOBS_IDLE_TIMEOUT`: default idle timeout of triggered runs.
    pub idle_timeout: Duration,
    /// `max_concurrent_runs`: triggered runs active at once on this daemon (0 = no limit).
    pub max_concurrent_runs: u32,
}

/// Where the configuration comes from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `--root DIR` (or `WEBJOBS_ROOT`, resolved by the caller through clap).
    pub root: Option<PathBuf>,
    /// `serve --listen ADDR:PORT`.
    pub listen: Option<String>,
}

/// The configuration could not be used; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

const KNOWN_KEYS: &str = "root, jobs_dir, data_dir, temp_dir, instance_id, debounce_ms, log, \
    interpreters, timezone, singleton_retry_ms, stopped, disable_schedule, history_size, \
    restart_time, idle_timeout, listen, api_user, api_password, token_file, max_upload_bytes, \
    max_unpacked_bytes, max_payload_bytes, max_concurrent_runs, cgroups, notify, notify_secret, coordination";

impl Config {
    /// Resolves the configuration from the process environment.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        Self::load_with_env(sources, &|name| std::env::var(name).ok())
    }

    /// Resolves the configuration with an injected environment (for tests).
    pub fn load_with_env(sources: &Sources, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut builder = Builder::defaults();
        if let Some(file) = &sources.file {
            builder.read_file(file, &mut problems);
        }
        builder.read_env(env, &mut problems);
        if let Some(root) = &sources.root {
            builder.root = root.clone();
        }
        if let Some(listen) = &sources.listen {
            builder.listen = Some(listen.clone());
        }
        if builder.api_user.is_some() != builder.api_password.is_some() {
            problems.push(Problem {
                file: sources.file.clone().unwrap_or_default(),
                key: "api_user".into(),
                message: "api_user and api_password go together: set both or neither".into(),
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        builder.finish(sources.file.clone()).map_err(|e| ConfigError {
            problems: vec![Problem {
                file: PathBuf::from("(current directory)"),
                key: String::new(),
                message: format!("cannot resolve relative paths: {e}"),
            }],
        })
    }

    /// The data folder of one job: logs, status, history.
    pub fn job_data_dir(&self, key: &crate::key::JobKey) -> PathBuf {
        crate::layout::job_data_dir(&self.data_dir, key)
    }

    /// The default instance id: derived from the machine, stable across restarts.
    pub fn machine_instance_id() -> String {
        let seed = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| nix::unistd::gethostname().ok().map(|h| h.to_string_lossy().into_owned()))
            .unwrap_or_default();
        format!("{:06x}", crate::hash::fnv1a(seed.trim().as_bytes()) & 0xff_ffff)
    }
}

/// Accumulates settings before paths are resolved against the root.
struct Builder {
    root: PathBuf,
    jobs_dir: PathBuf,
    data_dir: PathBuf,
    temp_dir: PathBuf,
    instance_id: Option<String>,
    debounce: Duration,
    log: LogConfig,
    interpreters: BTreeMap<String, Vec<String>>,
    switches: Switches,
    timezone: Option<String>,
    singleton_retry: Duration,
    listen: Option<String>,
    api_user: Option<String>,
    api_password: Option<String>,
    token_file: Option<PathBuf>,
    max_upload: u64,
    max_payload: u64,
    max_unpacked: u64,
    cgroups: bool,
    notify: Vec<crate::notify::Rule>,
    notify_secret: Option<String>,
    pg_url: Option<String>,
    pg_ttl: Duration,
    pg_ca: Option<PathBuf>,
    pg_advertise: Option<String>,
}

impl Builder {
    fn defaults() -> Builder {
        Builder {
            root: PathBuf::from("."),
            jobs_dir: PathBuf::from("jobs"),
            data_dir: PathBuf::from("data"),
            temp_dir: PathBuf::from("temp"),
            instance_id: None,
            debounce: Duration::from_millis(1000),
            log: LogConfig { max_size: 10 * 1024 * 1024, keep: 2, max_line: 64 * 1024 },
            interpreters: BTreeMap::new(),
            switches: Switches {
                stopped: false,
                disable_schedule: false,
                history_size: 50,
                restart_time: None,
                idle_timeout: Duration::from_secs(120),
                max_concurrent_runs: 0,
            },
            timezone: None,
            singleton_retry: Duration::from_secs(1),
            listen: Some("127.0.0.1:8719".into()),
            api_user: None,
            api_password: None,
            token_file: None,
            max_upload: 100 * 1024 * 1024,
            max_payload: 1024 * 1024,
            max_unpacked: 1024 * 1024 * 1024,
            cgroups: true,
            notify: Vec::new(),
            notify_secret: None,
            pg_url: None,
            pg_ttl: crate::coordination::postgres::PgSettings::DEFAULT_TTL,
            pg_ca: None,
            pg_advertise: None,
        }
    }

    /// The environment, over the file: WebJobs' switches and the instance id.
    fn read_env(&mut self, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<Problem>) {
        let mut bad = |name: &str, value: &str, expected: &str| {
            problems.push(Problem {
                file: PathBuf::from("(environment)"),
                key: name.to_string(),
                message: format!("expected {expected}, found \"{value}\""),
            })
        };
        let flag = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true");
        if let Some(v) = env("WEBJOBS_INSTANCE_ID").filter(|s| !s.is_empty()) {
            if valid_instance_id(&v) {
                self.instance_id = Some(v);
            } else {
                bad("WEBJOBS_INSTANCE_ID", &v, "1 to 32 letters, digits, `-` or `_`");
            }
        }
        if let Some(v) = env("WEBJOBS_POSTGRES_URL").filter(|s| !s.trim().is_empty()) {
            self.pg_url = Some(v.trim().to_string());
        }
        if let Some(v) = env("WEBJOBS_STOPPED") {
            self.switches.stopped = flag(&v);
        }
        if let Some(v) = env("WEBJOBS_DISABLE_SCHEDULE") {
            self.switches.disable_schedule = flag(&v);
        }
        if let Some(v) = env("WEBJOBS_HISTORY_SIZE") {
            match v.trim().parse::<u32>() {
                Ok(n) if n > 0 => self.switches.history_size = n,
                _ => bad("WEBJOBS_HISTORY_SIZE", &v, "a whole number above 0"),
            }
        }
        if let Some(v) = env("WEBJOBS_RESTART_TIME") {
            match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() => self.switches.restart_time = Some(Duration::from_secs_f64(s.max(0.0))),
                _ => bad("WEBJOBS_RESTART_TIME", &v, "a number of seconds"),
            }
        }
        if let Some(v) = env("WEBJOBS_IDLE_TIMEOUT") {
            match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => self.switches.idle_timeout = Duration::from_secs_f64(s),
                _ => bad("WEBJOBS_IDLE_TIMEOUT", &v, "a number of seconds above 0"),
            }
        }
    }

    fn read_file(&mut self, file: &Path, problems: &mut Vec<Problem>) {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(Problem {
                    file: file.to_path_buf(),
                    key: String::new(),
                    message: format!("cannot read the file: {e}"),
                });
                return;
            }
        };
        let map = match parse_object(file, &text) {
            Ok(map) => map,
            Err(p) => return problems.push(p),
        };
        let mut r = Reader::new(file, &map);
        self.read_keys(&mut r);
        r.deny_unknown(KNOWN_KEYS);
        problems.extend(r.into_problems());
    }

    fn read_keys<'a>(&mut self, r: &mut Reader<'a>) {
        let path = |s: &str| PathBuf::from(s);
        if let Some(s) = r.string("root") {
            self.root = path(s);
        }
        if let Some(s) = r.string("jobs_dir") {
            self.jobs_dir = path(s);
        }
        if let Some(s) = r.string("data_dir") {
            self.data_dir = path(s);
        }
        if let Some(s) = r.string("temp_dir") {
            self.temp_dir = path(s);
        }
        if let Some(s) = r.string("instance_id") {
            if valid_instance_id(s) {
                self.instance_id = Some(s.to_string());
            } else {
                r.problem("instance_id", "expected 1 to 32 letters, digits, `-` or `_`");
            }
        }
        if let Some(ms) = r.integer("debounce_ms", 0, 600_000) {
            self.debounce = Duration::from_millis(ms);
        }
        if let Some(ms) = r.integer("singleton_retry_ms", 50, 600_000) {
            self.singleton_retry = Duration::from_millis(ms);
        }
        if let Some(tz) = r.string("timezone") {
            if jiff::tz::TimeZone::get(tz).is_ok() {
                self.timezone = Some(tz.to_string());
            } else {
                r.problem(
                    "timezone",
                    format!("unknown time zone \"{tz}\" (expected an IANA name such as \"Europe/Paris\")"),
                );
            }
        }
        if let Some(b) = r.bool("cgroups") {
            self.cgroups = b;
        }
        self.read_log(r);
        self.read_interpreters(r);
        self.read_switches(r);
        self.read_api(r);
        self.notify = crate::notify::read_rules(r, "notify");
        self.notify_secret = r.string("notify_secret").map(str::to_string);
        self.read_coordination(r);
    }

    /// `"coordination": {"postgres": URL, "lease_ttl_ms": 5000, "ca_file": PEM, "advertise": URL}`
    /// (the URL may come from `WEBJOBS_POSTGRES_URL` instead).
    fn read_coordination<'a>(&mut self, r: &mut Reader<'a>) {
        let Some(map) = r.object("coordination") else { return };
        let mut cr = Reader::nested(r.file(), "coordination".into(), map);
        if let Some(url) = cr.string("postgres").filter(|u| !u.trim().is_empty()) {
            self.pg_url = Some(url.trim().to_string());
        }
        if let Some(ms) = cr.integer("lease_ttl_ms", 1000, 600_000) {
            self.pg_ttl = Duration::from_millis(ms);
        }
        self.pg_ca = cr.string("ca_file").map(PathBuf::from);
        self.pg_advertise = cr.string("advertise").map(|s| s.trim_end_matches('/').to_string());
        cr.deny_unknown("postgres, lease_ttl_ms, ca_file, advertise");
        r.absorb(cr);
    }

    fn read_api<'a>(&mut self, r: &mut Reader<'a>) {
        if r.has_null("listen") {
            r.value("listen");
            self.listen = None;
        } else if let Some(addr) = r.string("listen") {
            if addr.parse::<std::net::SocketAddr>().is_ok() {
                self.listen = Some(addr.to_string());
            } else {
                let message = format!(
                    "expected ADDRESS:PORT such as \"127.0.0.1:8719\" (or null for no TCP listener), found \"{addr}\""
                );
                r.problem("listen", message);
            }
        }
        self.api_user = r.string("api_user").map(str::to_string);
        self.api_password = r.string("api_password").map(str::to_string);
        if let Some(p) = r.string("token_file") {
            self.token_file = Some(PathBuf::from(p));
        }
        if let Some(n) = r.integer("max_payload_bytes", 0, 1024 * 1024 * 1024) {
            self.max_payload = n;
        }
        if let Some(n) = r.integer("max_upload_bytes", 1024, u64::MAX) {
            self.max_upload = n;
        }
        if let Some(n) = r.integer("max_unpacked_bytes", 1024, u64::MAX) {
            self.max_unpacked = n;
        }
    }

    fn read_log<'a>(&mut self, r: &mut Reader<'a>) {
        let Some(map) = r.object("log") else { return };
        let mut lr = Reader::nested(r.file(), "log".into(), map);
        if let Some(n) = lr.integer("max_size", 4096, u64::MAX) {
            self.log.max_size = n;
        }
        if let Some(n) = lr.integer("keep", 0, 100) {
            self.log.keep = n as u32;
        }
        if let Some(n) = lr.integer("max_line", 256, 16 * 1024 * 1024) {
            self.log.max_line = n as usize;
        }
        lr.deny_unknown("max_size, keep, max_line");
        r.absorb(lr);
    }

    fn read_interpreters<'a>(&mut self, r: &mut Reader<'a>) {
        let Some(map) = r.object("interpreters") else {
            return;
        };
        for (ext, value) in map {
            let argv: Option<Vec<String>> = match value {
                Value::String(s) if !s.trim().is_empty() => Some(vec![s.clone()]),
                Value::Array(items) if !items.is_empty() => {
                    items.iter().map(|v| v.as_str().map(str::to_string)).collect()
                }
                _ => None,
            };
            match argv {
                Some(argv) => {
                    self.interpreters.insert(ext.trim_start_matches('.').to_ascii_lowercase(), argv);
                }
                None => r.problem(
                    &format!("interpreters.{ext}"),
                    "expected a command as a string (\"python3\") or a non-empty array of strings ([\"java\", \"-jar\"])",
                ),
            }
        }
    }

    fn read_switches<'a>(&mut self, r: &mut Reader<'a>) {
        if let Some(b) = r.bool("stopped") {
            self.switches.stopped = b;
        }
        if let Some(b) = r.bool("disable_schedule") {
            self.switches.disable_schedule = b;
        }
        if let Some(n) = r.integer("history_size", 1, 100_000) {
            self.switches.history_size = n as u32;
        }
        if let Some(d) = r.seconds("restart_time") {
            self.switches.restart_time = Some(d);
        }
        if let Some(d) = r.seconds("idle_timeout") {
            self.switches.idle_timeout = d;
        }
        if let Some(n) = r.integer("max_concurrent_runs", 0, 1_000_000) {
            self.switches.max_concurrent_runs = n as u32;
        }
    }

    fn finish(self, source: Option<PathBuf>) -> std::io::Result<Config> {
        let root = std::path::absolute(&self.root)?;
        let under_root = |p: PathBuf| {
            if p.is_absolute() { p } else { root.join(p) }
        };
        Ok(Config {
            source: source.map(|s| std::path::absolute(&s).unwrap_or(s)),
            jobs_dir: under_root(self.jobs_dir.clone()),
            data_dir: under_root(self.data_dir.clone()),
            temp_dir: under_root(self.temp_dir.clone()),
            instance_id: self.instance_id.clone().unwrap_or_else(Config::machine_instance_id),
            debounce: self.debounce,
            log: self.log,
            interpreters: self.interpreters,
            switches: self.switches,
            timezone: self.timezone,
            singleton_retry: self.singleton_retry,
            api: ApiConfig {
                listen: self.listen,
                user: self.api_user,
                password: self.api_password,
                token_file: self
                    .token_file
                    .map(&under_root)
                    .unwrap_or_else(|| under_root(self.data_dir.clone()).join(crate::layout::API_TOKEN)),
                max_upload: self.max_upload,
                max_payload: self.max_payload,
                max_unpacked: self.max_unpacked,
            },
            cgroups: self.cgroups,
            notify: self.notify,
            notify_secret: self.notify_secret,
            postgres: self.pg_url.map(|url| crate::coordination::postgres::PgSettings {
                url,
                ttl: self.pg_ttl,
                ca_file: self.pg_ca.map(&under_root),
                advertise: self.pg_advertise,
            }),
        })
    }
}

/// Instance ids go into file names and log lines: keep them plain.
pub fn valid_instance_id(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("webjobs.json");
        std::fs::write(&file, json).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Config::load_with_env(&Sources { file: Some(file), root: None, listen: None }, &lookup)
    }

    #[test]
    fn defaults_put_everything_under_the_current_directory_as_absolute_paths() {
        let c = Config::load_with_env(&Sources::default(), &|_| None).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.jobs_dir, cwd.join("jobs"));
        assert_eq!(c.data_dir, cwd.join("data"));
        assert_eq!(c.temp_dir, cwd.join("temp"));
        assert_eq!(c.api.token_file, cwd.join("data/api-token"));
        assert_eq!(c.switches.history_size, 50);
        assert_eq!(c.debounce, Duration::from_secs(1));
        assert_eq!(c.instance_id.len(), 6);
    }

    #[test]
    fn every_problem_is_listed_with_file_and_key() {
        let err = load(
            r#"{"debounce_ms": "fast", "log": {"keep": -1, "colour": 1}, "stoped": true,
                "interpreters": {"py": 3}, "timezone": "Mars/Base", "instance_id": "a b"}"#,
            &[("WEBJOBS_HISTORY_SIZE", "zero")],
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "WEBJOBS_HISTORY_SIZE",
            "debounce_ms",
            "log.keep",
            "log.colour",
            "stoped",
            "interpreters.py",
            "timezone",
            "instance_id",
        ] {
            assert!(keys.contains(&key), "missing {key} in {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("webjobs.json: key `debounce_ms`: expected a whole number"), "{text}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let c = load(
            r#"{"history_size": 7, "stopped": false, "idle_timeout": 30, "instance_id": "fromfile"}"#,
            &[
                ("WEBJOBS_STOPPED", "TRUE"),
                ("WEBJOBS_HISTORY_SIZE", "9"),
                ("WEBJOBS_RESTART_TIME", "-5"),
                ("WEBJOBS_INSTANCE_ID", "fromenv"),
            ],
        )
        .unwrap();
        assert!(c.switches.stopped);
        assert_eq!(c.switches.history_size, 9);
        assert_eq!(c.switches.restart_time, Some(Duration::ZERO));
        assert_eq!(
            c.switches.idle_timeout,
            Duration::from_secs(30),
            "the file applies where the environment is silent"
        );
        assert_eq!(c.instance_id, "fromenv");
    }

    #[test]
    fn the_shipped_file_does_not_pin_the_environment_switches() {
        let file = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/settings/webjobs.json"));
        let env = |name: &str| match name {
            "WEBJOBS_STOPPED" | "WEBJOBS_DISABLE_SCHEDULE" => Some("1".to_string()),
            "WEBJOBS_HISTORY_SIZE" => Some("3".to_string()),
            "WEBJOBS_IDLE_TIMEOUT" => Some("7".to_string()),
            "WEBJOBS_RESTART_TIME" => Some("9".to_string()),
            _ => None,
        };
        let c = Config::load_with_env(&Sources { file: Some(file), root: None, listen: None }, &env).unwrap();
        assert!(c.switches.stopped && c.switches.disable_schedule);
        assert_eq!(c.switches.history_size, 3);
        assert_eq!(c.switches.idle_timeout, Duration::from_secs(7));
        assert_eq!(c.switches.restart_time, Some(Duration::from_secs(9)));
    }

    #[test]
    fn relative_paths_resolve_under_root() {
        let c = load(r#"{"root": "/srv/wj", "data_dir": "d", "temp_dir": "/tmp/t"}"#, &[]).unwrap();
        assert_eq!(c.jobs_dir, PathBuf::from("/srv/wj/jobs"));
        assert_eq!(c.data_dir, PathBuf::from("/srv/wj/d"));
        assert_eq!(c.temp_dir, PathBuf::from("/tmp/t"));
    }

    #[test]
    fn interpreters_accept_a_string_or_an_argv_array() {
        let c = load(r#"{"interpreters": {".PY": "/opt/python3", "jar": ["java", "-Xmx64m", "-jar"]}}"#, &[]).unwrap();
        assert_eq!(c.interpreters["py"], vec!["/opt/python3"]);
        assert_eq!(c.interpreters["jar"], vec!["java", "-Xmx64m", "-jar"]);
    }

    #[test]
    fn the_shipped_example_configuration_is_valid_and_complete() {
        let file = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/settings/webjobs.json"));
        let c =
            Config::load_with_env(&Sources { file: Some(file.clone()), root: None, listen: None }, &|_| None).unwrap();
        assert_eq!(c.jobs_dir, PathBuf::from("/var/lib/webjobs/jobs"));
        let text = std::fs::read_to_string(&file).unwrap();
        for key in KNOWN_KEYS.split(", ") {
            assert!(text.contains(&format!("\"{}\"", key.trim())), "{key} is missing from the example");
        }
    }
}
