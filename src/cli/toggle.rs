//! `webjobs start` / `webjobs stop`: remove or write `disable.job`. The file is
//! the persisted state (as in WebJobs). Through a running daemon, the command
//! returns once the daemon has acted on it: a continuous job has started or
//! stopped; a triggered job's schedule is resumed or paused and on-demand runs
//! are accepted or refused (an active run goes on; `webjobs cancel` ends it).

use std::process::ExitCode;

use crate::cli::client::encode;
use crate::cli::{CliError, find_job};
use crate::config::Config;
use crate::key::JobKind;
use crate::layout::DISABLE_FILE;

pub fn toggle(config: &Config, spec: &str, start: bool) -> anyhow::Result<ExitCode> {
    let def = find_job(config, spec)?;
    if let Some(client) = crate::cli::list::daemon(config)? {
        let verb = if start { "start" } else { "stop" };
        let path = format!("/api/{}webjobs/{}/{verb}", def.key.kind.as_str(), encode(&def.key.name));
        let r = client.post(&path)?;
        if r.status != 200 {
            return Err(CliError::from_status(r.status, r.error()));
        }
        let status = r.json()["status"].as_str().unwrap_or_default().to_string();
        println!("{}: {} ({status})", def.key, outcome(def.key.kind, start));
        return Ok(ExitCode::SUCCESS);
    }
    let file = def.script_dir.join(DISABLE_FILE);
    if start {
        match std::fs::remove_file(&file) {
            Ok(()) => println!("{}: {} (removed {})", def.key, outcome(def.key.kind, true), file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("{}: already started", def.key)
            }
            Err(e) => anyhow::bail!("cannot remove {}: {e}", file.display()),
        }
    } else if file.exists() {
        println!("{}: already stopped", def.key);
    } else {
        std::fs::write(&file, b"").map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
        println!("{}: {} (wrote {})", def.key, outcome(def.key.kind, false), file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn outcome(kind: JobKind, start: bool) -> &'static str {
    match (kind, start) {
        (JobKind::Continuous, true) => "started",
        (JobKind::Continuous, false) => "stopped (disable.job written)",
        (JobKind::Triggered, true) => "started: schedule resumed, runs accepted",
        (JobKind::Triggered, false) => "stopped (disable.job written): schedule paused, runs refused",
    }
}

/// `webjobs restart`: the daemon stops the process by the stop protocol and
/// starts it again; the command returns once the new process runs.
pub fn restart(config: &Config, spec: &str) -> anyhow::Result<ExitCode> {
    let name = crate::cli::find_kind(config, spec, JobKind::Continuous)?;
    let client = crate::cli::client::Client::connect(config)?;
    let r = client.post(&format!("/api/continuouswebjobs/{}/restart", encode(&name)))?;
    if r.status != 200 {
        return Err(CliError::from_status(r.status, r.error()));
    }
    let answer = r.json();
    let status = answer["status"].as_str().unwrap_or_default();
    match answer["pid"].as_i64() {
        Some(pid) => println!("continuous/{name}: restarted (pid {pid}, {status})"),
        None => println!("continuous/{name}: restart asked; now {status}"),
    }
    Ok(ExitCode::SUCCESS)
}
