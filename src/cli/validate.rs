//! `webjobs validate [path]`: every problem of a jobs folder or one job,
//! without a daemon. Exits 1 when there is at least one error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::config::Config;
use crate::jobs::{self, JobDef};
use crate::key::{JobKey, JobKind};

#[derive(Debug, Serialize)]
struct Report {
    job: String,
    path: PathBuf,
    command: Option<String>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

pub fn validate(config: &Config, path: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let defs = match path {
        None => jobs::scan_all(config),
        Some(path) => jobs_at(config, path)?,
    };
    let mut reports: Vec<Report> = defs.iter().map(report).collect();
    // Across jobs: `then` naming no triggered job here, and loops.
    for (key, problem) in jobs::chain_problems(&defs) {
        if let Some(r) = reports.iter_mut().find(|r| r.job == key.to_string()) {
            r.errors.push(problem);
        }
    }
    let failed = reports.iter().any(|r| !r.errors.is_empty());
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_reports(&reports);
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_reports(reports: &[Report]) {
    if reports.is_empty() {
        println!("no jobs found");
    }
    for r in reports {
        if r.errors.is_empty() {
            println!("ok     {}  ({})", r.job, r.command.as_deref().unwrap_or("?"));
        }
        for e in &r.errors {
            println!("error  {}: {e}", r.job);
        }
        for w in &r.warnings {
            println!("warn   {}: {}", r.job, w.trim_start_matches("warning: "));
        }
    }
    let errors: usize = reports.iter().map(|r| r.errors.len()).sum();
    let warnings: usize = reports.iter().map(|r| r.warnings.len()).sum();
    println!("{} job(s), {errors} error(s), {warnings} warning(s)", reports.len());
}

fn report(def: &JobDef) -> Report {
    Report {
        job: def.key.to_string(),
        path: def.dir.clone(),
        command: def.script.as_ref().ok().map(|s| {
            let host = s.host.first().and_then(|h| Path::new(h).file_name()).map(|h| h.to_string_lossy().into_owned());
            let rest: Vec<&str> = s.host.iter().skip(1).map(String::as_str).collect();
            let mut parts: Vec<String> = host.into_iter().chain(rest.into_iter().map(String::from)).collect();
            parts.push(s.file.clone());
            parts.join(" ")
        }),
        errors: def.errors(),
        warnings: def.warnings(),
    }
}

/// What `path` is: a jobs folder, a kind folder, or one job (kind from its
/// parent folder's name, else from whether settings.job has a schedule).
fn jobs_at(config: &Config, path: &Path) -> anyhow::Result<Vec<JobDef>> {
    if !path.is_dir() {
        anyhow::bail!("{} is not a folder", path.display());
    }
    let name_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let has_kinds = JobKind::ALL.iter().any(|k| path.join(k.as_str()).is_dir());
    if has_kinds {
        let config = Config { jobs_dir: path.to_path_buf(), ..config.clone() };
        return Ok(jobs::scan_all(&config));
    }
    if let Some(kind) = JobKind::parse(&name_of(path)) {
        let config = Config { jobs_dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(), ..config.clone() };
        return Ok(jobs::scan_all(&config).into_iter().filter(|d| d.key.kind == kind).collect());
    }
    let abs = std::fs::canonicalize(path)?;
    let kind = abs.parent().and_then(|p| JobKind::parse(&name_of(p))).unwrap_or_else(|| guess_kind(path));
    Ok(vec![jobs::read_job_at(config, JobKey::new(kind, name_of(&abs)), abs)])
}

fn guess_kind(dir: &Path) -> JobKind {
    let text = std::fs::read_to_string(dir.join(crate::layout::SETTINGS_FILE)).unwrap_or_default();
    let has_schedule = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.get("schedule").is_some());
    if has_schedule { JobKind::Triggered } else { JobKind::Continuous }
}
