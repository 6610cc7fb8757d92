//! `webjobs start` / `webjobs stop`: remove or write `disable.job`. The file is
//! the persisted state (as in WebJobs); the daemon reacts through its watcher.

use std::process::ExitCode;

use crate::cli::client::encode;
use crate::cli::{EXIT_NOT_FOUND, find_job};
use crate::config::Config;
use crate::jobs::{DISABLE_FILE, JobKind};

pub fn toggle(config: &Config, spec: &str, start: bool) -> anyhow::Result<ExitCode> {
    let def = match find_job(config, spec) {
        Ok(def) => def,
        Err(e) => {
            eprintln!("webjobs: {e}");
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
    };
    if def.key.kind != JobKind::Continuous {
        anyhow::bail!("{} is a triggered job; start and stop apply to continuous jobs", def.key);
    }
    match crate::cli::list::daemon(config) {
        Err(code) => return Ok(code),
        Ok(Some(client)) => {
            let path =
                format!("/api/continuouswebjobs/{}/{}", encode(&def.key.name), if start { "start" } else { "stop" });
            let r = client.post(&path)?;
            if r.status != 200 {
                anyhow::bail!("the daemon answered {}: {}", r.status, r.error());
            }
            println!("{}: {}", def.key, if start { "started" } else { "stopped (disable.job written)" });
            return Ok(ExitCode::SUCCESS);
        }
        Ok(None) => {}
    }
    let file = def.script_dir.join(DISABLE_FILE);
    if start {
        match std::fs::remove_file(&file) {
            Ok(()) => println!("{}: started (removed {})", def.key, file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("{}: already started", def.key)
            }
            Err(e) => anyhow::bail!("cannot remove {}: {e}", file.display()),
        }
    } else if file.exists() {
        println!("{}: already stopped", def.key);
    } else {
        std::fs::write(&file, b"").map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
        println!("{}: stopped (wrote {})", def.key, file.display());
    }
    Ok(ExitCode::SUCCESS)
}
