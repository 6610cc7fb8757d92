//! `webjobs history <job>` and `webjobs logs <job>`: read from the data folder.

use std::process::ExitCode;

use crate::api::views::RunView;
use crate::cli::client::encode;
use crate::cli::run::{follow_file, follow_run, run_dir};
use crate::cli::{CliError, find_job};
use crate::config::Config;
use crate::history;
use crate::key::JobKind;

pub fn history(config: &Config, spec: &str, json: bool) -> anyhow::Result<ExitCode> {
    let def = find_job(config, &format!("triggered/{}", spec.trim_start_matches("triggered/")))?;
    let data = config.job_data_dir(&def.key);
    let runs: Vec<serde_json::Value> = match crate::cli::list::daemon(config)? {
        Some(client) => {
            let r = client.get(&format!("/api/triggeredwebjobs/{}/history", encode(&def.key.name)))?;
            if r.status != 200 {
                return Err(CliError::from_status(r.status, r.error()));
            }
            r.json()["runs"].as_array().cloned().unwrap_or_default()
        }
        None => history::run_ids(&data)
            .iter()
            .filter_map(|id| RunView::load("", &def.key.name, &data, id))
            .filter_map(|v| serde_json::to_value(v).ok())
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs of {} yet", def.key);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<18}  {:<12}  {:<24}  {:<16}  {:<10}  TRIGGER", "RUN", "STATUS", "START", "DURATION", "EXIT");
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    for r in &runs {
        let exit = if r["exit_code"].is_null() { text(&r["signal"]) } else { text(&r["exit_code"]) };
        let fields = [&r["id"], &r["status"], &r["start_time"], &r["duration"]].map(text);
        println!(
            "{:<18}  {:<12}  {:<24}  {:<16}  {:<10}  {}",
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            exit,
            text(&r["trigger"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logs(config: &Config, spec: &str, run: Option<&str>, follow: bool) -> anyhow::Result<ExitCode> {
    let def = find_job(config, spec)?;
    let data = config.job_data_dir(&def.key);
    let no_run = || CliError::NotFound(format!("{} has no run {}", def.key, run.unwrap_or("yet")));
    if let Some(client) = crate::cli::list::daemon(config)? {
        let url = match def.key.kind {
            JobKind::Continuous => format!("/vfs/data/jobs/continuous/{}/job_log.txt", encode(&def.key.name)),
            JobKind::Triggered => match run_dir(config, &def.key.name, run.unwrap_or("latest")) {
                Some(dir) => format!(
                    "/vfs/data/jobs/triggered/{}/{}/output_log.txt",
                    encode(&def.key.name),
                    dir.file_name().unwrap_or_default().to_string_lossy()
                ),
                None => return Err(no_run().into()),
            },
        };
        let url = if follow { format!("{url}?follow=1") } else { url };
        let status = client.stream(&url, |chunk| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(chunk);
            let _ = out.flush();
        })?;
        if status != 200 {
            return Err(CliError::from_status(status, format!("cannot read the log of {}", def.key)));
        }
        return Ok(ExitCode::SUCCESS);
    }
    match def.key.kind {
        JobKind::Continuous => {
            let path = data.join(crate::layout::JOB_LOG);
            if follow {
                follow_file(&path, || false);
            } else {
                crate::cli::client::print_from(&path, 0);
            }
        }
        JobKind::Triggered => {
            let Some(dir) = run_dir(config, &def.key.name, run.unwrap_or("latest")) else {
                return Err(no_run().into());
            };
            if follow {
                follow_run(&dir);
            } else {
                crate::cli::client::print_from(&dir.join(crate::layout::OUTPUT_LOG), 0);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
