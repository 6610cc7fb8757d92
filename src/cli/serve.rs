//! `webjobs serve`: the daemon, with signals wired to the library's `run`.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{Config, Sources};
use crate::daemon;
use crate::systemd::Systemd;

pub fn serve(config: Config, sources: Sources) -> anyhow::Result<ExitCode> {
    crate::process::init_daemon_process();
    init_tracing();
    // Blocking work (scans, working copies) is short; a small pool keeps the
    // daemon small and quiet after a start of hundreds of jobs.
    let runtime = tokio::runtime::Builder::new_multi_thread().max_blocking_threads(8).enable_all().build()?;
    runtime.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (reload_tx, reload_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match Config::load(&sources) {
                    Ok(config) => {
                        let _ = reload_tx.send(config).await;
                    }
                    Err(e) => tracing::error!("SIGHUP: keeping the current configuration: {e}"),
                }
            }
        });
        let systemd = Systemd::from_env();
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
                _ = int.recv() => tracing::info!("SIGINT received; stopping"),
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        };
        daemon::run(config, shutdown, reload_rx, systemd).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The daemon's own log: stderr, filtered by `WEBJOBS_LOG` (default `info`);
/// no timestamps or colours under journald, which adds its own.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEBJOBS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    if journald {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}
