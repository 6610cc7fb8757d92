//! `webjobs history <job>` and `webjobs logs <job>`: read from the data folder.

use std::process::ExitCode;

use crate::api::views::RunView;
use crate::cli::run::{follow_file, follow_run, run_dir};
use crate::cli::{EXIT_NOT_FOUND, find_job};
use crate::config::Config;
use crate::history;
use crate::jobs::JobKind;

pub fn history(config: &Config, spec: &str, json: bool) -> anyhow::Result<ExitCode> {
    let def = match find_job(config, &format!("triggered/{}", spec.trim_start_matches("triggered/"))) {
        Ok(def) => def,
        Err(e) => {
            eprintln!("webjobs: {e}");
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
    };
    let data = config.job_data_dir(&def.key);
    let runs: Vec<RunView> =
        history::run_ids(&data).iter().filter_map(|id| RunView::load("", &def.key.name, &data, id)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs of {} yet", def.key);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<18}  {:<12}  {:<24}  {:<16}  {:<10}  TRIGGER", "RUN", "STATUS", "START", "DURATION", "EXIT");
    for r in &runs {
        let exit = r.exit_code.map(|c| c.to_string()).or(r.signal.clone()).unwrap_or_default();
        println!(
            "{:<18}  {:<12}  {:<24}  {:<16}  {:<10}  {}",
            r.id, r.status, r.start_time, r.duration, exit, r.trigger
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logs(config: &Config, spec: &str, run: Option<&str>, follow: bool) -> anyhow::Result<ExitCode> {
    let def = match find_job(config, spec) {
        Ok(def) => def,
        Err(e) => {
            eprintln!("webjobs: {e}");
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
    };
    let data = config.job_data_dir(&def.key);
    match def.key.kind {
        JobKind::Continuous => {
            let path = data.join("job_log.txt");
            if follow {
                follow_file(&path, || false);
            } else {
                crate::cli::client::print_from(&path, 0);
            }
        }
        JobKind::Triggered => {
            let Some(dir) = run_dir(config, &def.key.name, run.unwrap_or("latest")) else {
                eprintln!("webjobs: {} has no run {}", def.key, run.unwrap_or("yet"));
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            if follow {
                follow_run(&dir);
            } else {
                crate::cli::client::print_from(&dir.join("output_log.txt"), 0);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
