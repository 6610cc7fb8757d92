//! `webjobs db migrate` and `webjobs cluster`: the PostgreSQL database the
//! daemons share, read and migrated directly (no daemon needed).

use std::process::ExitCode;

use crate::config::Config;
use crate::coordination::postgres::Postgres;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn database(config: &Config) -> anyhow::Result<&crate::coordination::postgres::PgSettings> {
    config.postgres.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "no database is configured: set coordination.postgres in the configuration (or WEBJOBS_POSTGRES_URL); \
             without one, daemons coordinate by lock files in a shared data folder"
        )
    })
}

/// Creates or upgrades the schema (daemons do it at start too).
pub fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    let settings = database(config)?;
    let version = runtime()?.block_on(async {
        let pg = Postgres::open(settings, &config.data_dir).await?;
        anyhow::Ok(pg.migrate().await?)
    })?;
    println!("schema of {} is at version {version}", settings.shown());
    Ok(ExitCode::SUCCESS)
}

/// The daemons sharing the database, and the jobs whose content differs.
pub fn cluster(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let settings = database(config)?;
    let view = runtime()?.block_on(async {
        let pg = Postgres::open(settings, &config.data_dir).await?;
        anyhow::Ok(pg.cluster().await?)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", view["coordination"].as_str().unwrap_or_default());
    println!(
        "{:<20}  {:<20}  {:>8}  {:<9}  {:>5}  {:<26}  API",
        "INSTANCE", "HOST", "PID", "VERSION", "JOBS", "STARTED"
    );
    for i in view["instances"].as_array().into_iter().flatten() {
        let text = |k: &str| i[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<20}  {:<20}  {:>8}  {:<9}  {:>5}  {:<26}  {}",
            text("instance"),
            text("host"),
            i["pid"],
            text("version"),
            i["jobs"],
            text("started"),
            text("api")
        );
    }
    let skew = view["skew"].as_object().cloned().unwrap_or_default();
    if skew.is_empty() {
        println!("every job has the same content on every daemon");
    } else {
        println!("jobs whose content differs between daemons (deploy them everywhere):");
        for (job, hashes) in &skew {
            let versions: Vec<String> = hashes
                .as_object()
                .into_iter()
                .flatten()
                .map(|(hash, who)| {
                    format!(
                        "{hash} on {}",
                        who.as_array().into_iter().flatten().filter_map(|w| w.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            println!("  {job}: {}", versions.join("; "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
