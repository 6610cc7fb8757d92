//! `webjobs list` and `webjobs status <job>`: the jobs on disk, with the
//! status each daemon persisted for them.

use std::process::ExitCode;

use serde::Serialize;

use crate::cli::{EXIT_NOT_FOUND, find_job};
use crate::config::Config;
use crate::coordination::instance_alive;
use crate::jobs::{self, JobDef, JobKind};
use crate::status::{self, ContinuousStatus, JobStatus};

/// One job as the CLI shows it.
#[derive(Debug, Serialize)]
struct JobView {
    name: String,
    #[serde(rename = "type")]
    kind: JobKind,
    status: String,
    /// One line per instance: `<instance> - <Status>` (WebJobs' format).
    detailed_status: String,
    run_command: Option<String>,
    error: Option<String>,
    warnings: Vec<String>,
    log_path: Option<String>,
    instances: Vec<InstanceView>,
}

#[derive(Debug, Serialize)]
struct InstanceView {
    /// Whether that daemon is running now (its status is stale otherwise).
    daemon_running: bool,
    #[serde(flatten)]
    status: ContinuousStatus,
}

fn view(config: &Config, def: &JobDef) -> JobView {
    let data = config.job_data_dir(&def.key);
    let instances: Vec<InstanceView> = match def.key.kind {
        JobKind::Continuous => status::read_all(&data)
            .into_iter()
            .map(|s| InstanceView { daemon_running: instance_alive(&config.data_dir, &s.instance), status: s })
            .collect(),
        JobKind::Triggered => Vec::new(),
    };
    let live: Vec<&ContinuousStatus> = instances.iter().filter(|i| i.daemon_running).map(|i| &i.status).collect();
    let errors = def.errors();
    let status = overall(def, &errors, &live);
    let detailed_status = instances
        .iter()
        .map(|i| {
            format!(
                "{} - {}{}",
                i.status.instance,
                i.status.status.as_str(),
                if i.daemon_running { "" } else { " (daemon not running)" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let error = live.iter().find_map(|s| s.error.clone()).or_else(|| (!errors.is_empty()).then(|| errors.join("; ")));
    JobView {
        name: def.key.name.clone(),
        kind: def.key.kind,
        status,
        detailed_status,
        run_command: def.script.as_ref().ok().map(|s| s.file.clone()),
        error,
        warnings: def.warnings(),
        log_path: (def.key.kind == JobKind::Continuous).then(|| data.join("job_log.txt").display().to_string()),
        instances,
    }
}

/// WebJobs' rule: the status of the first instance that is not inactive.
fn overall(def: &JobDef, errors: &[String], live: &[&ContinuousStatus]) -> String {
    if let Some(active) = live.iter().find(|s| s.status != JobStatus::InactiveInstance).or(live.first()) {
        return active.status.as_str().to_string();
    }
    if !errors.is_empty() {
        return "Invalid".into();
    }
    match def.key.kind {
        JobKind::Continuous if def.disabled => "Stopped".into(),
        JobKind::Continuous => "NotRunning".into(),
        JobKind::Triggered => "Ready".into(),
    }
}

fn detail(v: &JobView) -> String {
    if let Some(e) = &v.error {
        return e.clone();
    }
    let Some(s) = v.instances.iter().find(|i| i.daemon_running).map(|i| &i.status) else {
        return if v.status == "NotRunning" { "no daemon is running this job".into() } else { String::new() };
    };
    match s.status {
        JobStatus::Running => format!("pid {} since {}", s.pid.unwrap_or(0), s.start_time.clone().unwrap_or_default()),
        JobStatus::PendingRestart => format!(
            "restart #{} at {} (last: {})",
            s.restarts,
            s.next_restart.clone().unwrap_or_default(),
            s.last_exit.clone().unwrap_or_default()
        ),
        JobStatus::Stopped => s.reason.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

pub fn list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let views: Vec<JobView> = jobs::scan_all(config).iter().map(|d| view(config, d)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        println!("no jobs in {}", config.jobs_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let width = views.iter().map(|v| v.name.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:<10}  {:<16}  DETAIL", "NAME", "TYPE", "STATUS");
    for v in &views {
        println!("{:<width$}  {:<10}  {:<16}  {}", v.name, v.kind.as_str(), v.status, detail(v));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(config: &Config, spec: &str, json: bool) -> anyhow::Result<ExitCode> {
    let def = match find_job(config, spec) {
        Ok(def) => def,
        Err(e) => {
            eprintln!("webjobs: {e}");
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
    };
    let v = view(config, &def);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("job:      {}/{}", v.kind.as_str(), v.name);
    println!("folder:   {}", def.script_dir.display());
    println!("status:   {}", v.status);
    if let Ok(script) = &def.script {
        println!("command:  {} {}", script.host.join(" "), script.file);
    }
    if let Some(path) = &v.log_path {
        println!("log:      {path}");
    }
    if let Some(error) = &v.error {
        println!("error:    {error}");
    }
    for w in &v.warnings {
        println!("{w}");
    }
    for i in &v.instances {
        let s = &i.status;
        println!("instance {}{}:", s.instance, if i.daemon_running { "" } else { " (daemon not running)" });
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
    Ok(ExitCode::SUCCESS)
}
