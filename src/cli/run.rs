//! `webjobs run <job> [--wait] [--follow] [request options] [-- args…]` and `webjobs cancel`.

use std::process::ExitCode;

use crate::cli::client::{Client, encode, print_from};
use crate::cli::queue::{RequestOptions, accepted, with_query};
use crate::cli::{CliError, exit_for_run};
use crate::config::Config;
use crate::history::{self, RunState};
use crate::key::{JobKey, JobKind};

pub fn run(
    config: &Config,
    job: &str,
    options: &RequestOptions,
    args: &[String],
    wait: bool,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::connect(config)?;
    let (query, body) = options.to_query(args)?;
    let path = with_query(format!("/api/triggeredwebjobs/{}/run", encode(job)), &query)?;
    let body = accepted(client.post_body(&path, body)?)?;
    if json && !wait {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let request = body["request"].as_str().unwrap_or_default().to_string();
    if body["queued"] == true && !wait && !follow {
        if options.later() {
            println!(
                "{request} queued for later (`webjobs queue {job}` lists it, `webjobs cancel {job} {request}` cancels it)"
            );
        } else {
            println!("{request} queued: it starts when a run slot is free (overlap: queue)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = match body["id"].as_str() {
        Some(id) => id.to_string(),
        None => first_run_of(&client, job, &request)?,
    };
    if !wait && !follow {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let dir = config.job_data_dir(&JobKey::new(JobKind::Triggered, job)).join(&id);
    if follow {
        follow_run(&dir);
    } else {
        wait_run(&client, job, &id);
    }
    let state = history::read_status(&dir).map(|s| s.status).unwrap_or(RunState::Aborted);
    if json {
        let view = client.get(&format!("/api/triggeredwebjobs/{}/history/{id}", encode(job)))?;
        println!("{}", serde_json::to_string_pretty(&view.json())?);
    } else if !follow {
        println!("{id} {}", state.as_str());
    }
    Ok(exit_for_run(state))
}

/// Waits until queued request `request` has started, and returns its run's
/// id; an error when it is neither queued nor started (cancelled).
fn first_run_of(client: &Client, job: &str, request: &str) -> anyhow::Result<String> {
    let history = format!("/api/triggeredwebjobs/{}/history", encode(job));
    let queue = format!("/api/triggeredwebjobs/{}/queue?id={}", encode(job), encode(request));
    let mut missing = 0;
    loop {
        let runs = client.get(&history)?.json()["runs"].as_array().cloned().unwrap_or_default();
        // Oldest first: its first attempt.
        if let Some(run) = runs.iter().rev().find(|r| r["request"] == request) {
            return Ok(run["id"].as_str().unwrap_or_default().to_string());
        }
        let queued = client.get(&queue)?.json()["requests"].as_array().cloned().unwrap_or_default();
        // Twice in a row, as a run between its start and its first status is in neither.
        missing = if queued.iter().any(|r| r["id"] == request) { 0 } else { missing + 1 };
        if missing >= 2 {
            return Err(CliError::NotFound(format!("request {request} was cancelled before it ran")).into());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Long-polls the daemon until the run has ended.
fn wait_run(client: &Client, job: &str, id: &str) {
    let path = format!("/api/triggeredwebjobs/{}/history/{id}?wait=600", encode(job));
    loop {
        match client.get(&path) {
            Ok(r) if r.status == 200 => {
                let status = r.json()["status"].as_str().unwrap_or_default().to_string();
                if !matches!(status.as_str(), "Initializing" | "Running") {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Prints the run's output as it is written, until the run has ended.
pub fn follow_run(dir: &std::path::Path) {
    let log = dir.join(crate::layout::OUTPUT_LOG);
    let done = || history::read_status(dir).is_some_and(|s| s.status.is_final());
    follow_file(&log, done);
}

/// `tail -f` of `path` until `done()` holds and the file has been read to its end.
pub fn follow_file(path: &std::path::Path, done: impl Fn() -> bool) {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).ok();
    if let (Some(w), Some(parent)) = (watcher.as_mut(), path.parent()) {
        let _ = w.watch(parent, notify::RecursiveMode::NonRecursive);
    }
    let mut offset = 0;
    loop {
        let finished = done();
        offset = print_from(path, offset);
        if finished {
            return;
        }
        let _ = rx.recv_timeout(std::time::Duration::from_millis(500));
    }
}

pub fn cancel(config: &Config, job: &str, run: Option<&str>) -> anyhow::Result<ExitCode> {
    let client = Client::connect(config)?;
    let mut path = format!("/api/triggeredwebjobs/{}/cancel", encode(job));
    if let Some(run) = run {
        path.push_str(&format!("?run={}", encode(run)));
    }
    let response = client.post(&path)?;
    match response.status {
        200 => {
            println!("{} Cancelled", response.json()["id"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        404 => Err(CliError::NotFound(response.error()).into()),
        _ => {
            // Not an active run: perhaps a queued request.
            if let Some(id) = run
                && let Some(code) = crate::cli::queue::dequeue(&client, job, id)?
            {
                return Ok(code);
            }
            Err(CliError::Refused(response.error()).into())
        }
    }
}
