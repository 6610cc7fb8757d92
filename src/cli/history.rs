//! `webjobs history <job>`: a triggered job's runs, newest first.

use std::process::ExitCode;

use crate::api::views::RunView;
use crate::cli::client::encode;
use crate::cli::{CliError, find_job};
use crate::config::Config;
use crate::history;

pub fn history(config: &Config, spec: &str, json: bool) -> anyhow::Result<ExitCode> {
    let def = find_job(config, &format!("triggered/{spec}"))?;
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
