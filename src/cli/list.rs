//! `webjobs list` and `webjobs status <job>`: from the daemon's API, or from
//! the data folder when no daemon runs (said on stderr).

use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

use crate::cli::client::{Client, ClientError, encode, instance_alive};
use crate::cli::term::{self, Clock, Paint};
use crate::cli::{CliError, find_job};
use crate::config::Config;

use crate::jobs::{self, JobDef};
use crate::key::JobKind;
use crate::status::{self, ContinuousStatus, JobStatus};

/// The daemon, or `None` (after saying so) when none is running.
pub(crate) fn daemon(config: &Config) -> Result<Option<Client>, ClientError> {
    match Client::connect(config) {
        Ok(client) => Ok(Some(client)),
        Err(ClientError::NotRunning { data }) => {
            eprintln!("webjobs: no daemon is running on {}; showing what is on disk", data.display());
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub fn list(config: &Config, json: bool, utc: bool, paint: Paint) -> anyhow::Result<ExitCode> {
    let jobs: Vec<Value> = match daemon(config)? {
        Some(client) => {
            let r = client.get("/api/webjobs")?;
            if r.status != 200 {
                return Err(CliError::from_status(r.status, r.error()));
            }
            serde_json::from_slice(&r.body)?
        }
        None => jobs::scan_all(config)
            .iter()
            .map(|d| serde_json::to_value(disk_view(config, d)))
            .collect::<Result<_, _>>()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        println!("no jobs in {}", config.jobs_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let clock = Clock::now(utc);
    let rows: Vec<Vec<String>> = jobs.iter().map(|j| row(j, clock, paint)).collect();
    let header = ["NAME", "TYPE", "STATUS", "PID", "UPTIME", "RESTARTS", "LAST", "NEXT", "DETAIL"];
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(term::table(&header, &rows, term::width(), paint).as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// One job's row of `list`, from its JSON.
fn row(j: &Value, clock: Clock, paint: Paint) -> Vec<String> {
    let text = |k: &str| j[k].as_str().unwrap_or_default().to_string();
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let status = text("status");
    let (last, next) = match j["type"].as_str() {
        Some("triggered") => {
            let last = j["latest_run"].as_object().map(|run| {
                let at = run["end_time"].as_str().filter(|t| !t.starts_with("0001")).or(run["start_time"].as_str());
                let status = run["status"].as_str().unwrap_or_default();
                format!("{} {}", paint.status(status), at.map(|t| clock.show(t)).unwrap_or_default())
            });
            (last.unwrap_or_default(), j["next_run"].as_str().map(|t| clock.show(t)).unwrap_or_default())
        }
        _ => {
            let next = j["next_restart"].as_str().map(|t| format!("restart {}", clock.show(t)));
            (text("last_exit"), next.unwrap_or_default())
        }
    };
    vec![
        text("name"),
        text("type"),
        paint.status(&status),
        or_dash(j["pid"].as_i64().map(|p| p.to_string()).unwrap_or_default()),
        or_dash(j["started"].as_str().map(|t| clock.since(t)).unwrap_or_default()),
        or_dash(j["restarts"].as_u64().map(|n| n.to_string()).unwrap_or_default()),
        or_dash(last),
        or_dash(next),
        detail(j),
    ]
}

/// What else there is to know about a job, in a line.
fn detail(j: &Value) -> String {
    if let Some(e) = j["error"].as_str() {
        return e.to_string();
    }
    let mut parts = Vec::new();
    if let Some(n) = j["queued"].as_u64().filter(|n| *n > 0) {
        parts.push(format!("{n} queued"));
    }
    if let Some(d) = j["detail"].as_str().filter(|d| !d.is_empty()) {
        parts.push(d.to_string());
    }
    for w in j["warnings"].as_array().into_iter().flatten() {
        parts.push(w.as_str().unwrap_or_default().to_string());
    }
    parts.join("; ")
}

pub fn status(config: &Config, spec: &str, json: bool, paint: Paint) -> anyhow::Result<ExitCode> {
    let def = find_job(config, spec)?;
    let view: Value = match daemon(config)? {
        Some(client) => {
            let path = format!("/api/{}webjobs/{}", def.key.kind.as_str(), encode(&def.key.name));
            let r = client.get(&path)?;
            if r.status != 200 {
                return Err(CliError::from_status(r.status, r.error()));
            }
            serde_json::from_slice(&r.body)?
        }
        None => serde_json::to_value(disk_view(config, &def))?,
    };
    let instances = status::read_all(&config.job_data_dir(&def.key));
    if json {
        // Everything the text shows: the view, and where the job lives.
        let mut view = view;
        view["folder"] = def.script_dir.display().to_string().into();
        view["command"] = def.script.as_ref().ok().map(|s| format!("{} {}", s.host.join(" "), s.file)).into();
        if def.key.kind == JobKind::Continuous {
            view["log"] = config.job_data_dir(&def.key).join(crate::layout::JOB_LOG).display().to_string().into();
        }
        view["instances"] = serde_json::to_value(&instances)?;
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let clock = Clock::now(false);
    let at = |key: &str| view[key].as_str().map(|t| format!("{t} ({})", clock.show(t)));
    println!("job:      {}/{}", def.key.kind.as_str(), def.key.name);
    println!("folder:   {}", def.script_dir.display());
    println!("status:   {}", paint.status(view["status"].as_str().unwrap_or_default()));
    if let Ok(script) = &def.script {
        println!("command:  {} {}", script.host.join(" "), script.file);
    }
    if def.key.kind == JobKind::Continuous {
        println!("log:      {}", config.job_data_dir(&def.key).join(crate::layout::JOB_LOG).display());
    }
    let fields = [
        ("pid", view["pid"].as_i64().map(|p| p.to_string())),
        ("started", at("started")),
        ("restarts", view["restarts"].as_u64().map(|n| n.to_string())),
        ("last exit", view["last_exit"].as_str().map(str::to_string)),
        ("restart", at("next_restart")),
        ("schedule", view["schedule"].as_str().map(str::to_string)),
        ("next run", at("next_run")),
        ("error", view["error"].as_str().map(str::to_string)),
        ("contained", view["containment"].as_str().map(str::to_string)),
    ];
    for (label, value) in fields.into_iter().filter_map(|(l, v)| Some((l, v?))) {
        println!("{:<9} {value}", format!("{label}:"));
    }
    if let Some(run) = view["latest_run"].as_object() {
        println!(
            "last run: {} {} ({})",
            run["id"].as_str().unwrap_or(""),
            run["status"].as_str().unwrap_or(""),
            run["trigger"].as_str().unwrap_or("")
        );
        if let Some(p) = run.get("progress").filter(|p| !p.is_null()) {
            let percent = p["percent"].as_f64().map(|n| format!("{n}% ")).unwrap_or_default();
            println!("progress: {percent}{}", p["message"].as_str().unwrap_or_default());
        }
        if let Some(result) = run.get("result").filter(|r| !r.is_null()) {
            println!("result:   {result}");
        }
        if let Some(why) = run["result_error"].as_str() {
            println!("result:   {why}");
        }
    }
    if let Some(n) = view["queued"].as_u64().filter(|n| *n > 0) {
        println!("queued:   {n} request(s) (`webjobs queue {}`)", def.key.name);
    }
    for w in view["warnings"].as_array().into_iter().flatten() {
        println!("{}", w.as_str().unwrap_or_default());
    }
    if let Some(d) = view["detailed_status"].as_str() {
        println!("instances:");
        for line in d.lines() {
            println!("  {line}");
        }
    }
    for s in &instances {
        print_instance(config, s);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_instance(config: &Config, s: &ContinuousStatus) {
    let running = instance_alive(&config.data_dir, &s.instance);
    println!("instance {}{}:", s.instance, if running { "" } else { " (daemon not running)" });
    println!("  status:        {}", s.status.as_str());
    let fields = [
        ("pid", s.pid.map(|p| p.to_string())),
        ("started", s.start_time.clone()),
        ("next restart", s.next_restart.clone()),
        ("last exit", s.last_exit.clone()),
        ("reason", s.reason.clone()),
        ("error", s.error.clone()),
    ];
    for (name, value) in fields.into_iter().filter_map(|(n, v)| Some((n, v?))) {
        println!("  {:<14} {value}", format!("{name}:"));
    }
    println!("  restarts:      {}", s.restarts);
    println!("  updated:       {}", s.updated);
}

/// A job as the data folder shows it (no daemon).
#[derive(Debug, Serialize)]
struct DiskView {
    name: String,
    #[serde(rename = "type")]
    kind: JobKind,
    status: String,
    detailed_status: String,
    run_command: Option<String>,
    error: Option<String>,
    warnings: Vec<String>,
    detail: String,
}

fn disk_view(config: &Config, def: &JobDef) -> DiskView {
    let data = config.job_data_dir(&def.key);
    let statuses: Vec<(bool, ContinuousStatus)> = match def.key.kind {
        JobKind::Continuous => {
            status::read_all(&data).into_iter().map(|s| (instance_alive(&config.data_dir, &s.instance), s)).collect()
        }
        JobKind::Triggered => Vec::new(),
    };
    let errors = def.errors();
    let live: Vec<&ContinuousStatus> = statuses.iter().filter(|(alive, _)| *alive).map(|(_, s)| s).collect();
    let status = match live.iter().find(|s| s.status != JobStatus::InactiveInstance).or(live.first()) {
        Some(s) => s.status.as_str().to_string(),
        None if !errors.is_empty() => "Invalid".into(),
        None if def.disabled => "Stopped".into(),
        None if def.key.kind == JobKind::Triggered => crate::history::run_ids(&data)
            .first()
            .and_then(|id| crate::history::read_status(&data.join(id)))
            .map(|s| s.status.as_str().to_string())
            .unwrap_or_else(|| "Ready".into()),
        None => "NotRunning".into(),
    };
    let detailed_status = statuses
        .iter()
        .map(|(alive, s)| {
            format!("{} - {}{}", s.instance, s.status.as_str(), if *alive { "" } else { " (daemon not running)" })
        })
        .collect::<Vec<_>>()
        .join("\n");
    DiskView {
        name: def.key.name.to_string(),
        kind: def.key.kind,
        detail: if status == "NotRunning" { "no daemon is running this job".into() } else { String::new() },
        status,
        detailed_status,
        run_command: def.script.as_ref().ok().map(|s| s.file.clone()),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        warnings: def.warnings(),
    }
}
