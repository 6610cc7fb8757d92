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
        // The first SIGTERM or SIGINT stops every job by the protocol; a
        // second one means now: SIGKILL to all of them.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (hurry_tx, hurry_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut stop_tx = Some(stop_tx);
            let mut hurry_tx = Some(hurry_tx);
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if let Some(tx) = stop_tx.take() {
                    tracing::info!(
                        "{name} received; stopping every job (a second SIGTERM or SIGINT kills them at once)"
                    );
                    let _ = sd_notify::notify(&[
                        sd_notify::NotifyState::Stopping,
                        sd_notify::NotifyState::Status("stopping jobs"),
                    ]);
                    let _ = tx.send(());
                } else if let Some(tx) = hurry_tx.take() {
                    tracing::warn!("{name} received again");
                    let _ = tx.send(());
                }
            }
        });
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        let hurry = async move {
            let _ = hurry_rx.await;
        };
        daemon::run(config, shutdown, hurry, reload_rx, systemd).await?;
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
