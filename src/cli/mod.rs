//! The `webjobs` command line: argument definitions and dispatch, one file per
//! subcommand.
//!
//! Exit codes: 0 success; 1 failure (or problems found by `validate`);
//! 2 usage error; 3 job (or run) not found; 4 refused by the daemon (a run is
//! already active, WEBJOBS_STOPPED, nothing to cancel); 5 the daemon cannot be
//! reached. `run --wait`/`--follow` end with the run: 0 Success, 6 Failed,
//! 7 Aborted, 8 Cancelled.

mod client;
mod db;
mod error;
mod events;
mod history;
mod list;
mod logs;
mod queue;
mod run;
mod schedule;
mod serve;
mod term;
mod toggle;
mod top;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Sources};
use crate::key::JobKind;

pub use error::CliError;

/// The exit code of `run --wait` for a run that ended in `state`.
pub fn exit_for_run(state: crate::history::RunState) -> ExitCode {
    use crate::history::RunState;
    ExitCode::from(match state {
        RunState::Success => 0,
        RunState::Failed => 6,
        RunState::Aborted | RunState::Initializing | RunState::Running => 7,
        RunState::Cancelled => 8,
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "webjobs",
    version,
    about = "Azure App Service WebJobs for any Linux machine: drop a script in a folder and it runs."
)]
pub struct Cli {
    /// Daemon configuration file (JSON).
    #[arg(long, global = true, env = "WEBJOBS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Put jobs/, data/ and temp/ under DIR.
    #[arg(long, global = true, env = "WEBJOBS_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// Colour the output: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t, value_name = "WHEN")]
    color: term::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Create or upgrade the webjobs schema (daemons also do it when they start).
    Migrate,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: supervise the jobs folder until SIGTERM/SIGINT.
    Serve {
        /// Serve the HTTP API and dashboard on ADDR:PORT (default from the config, 127.0.0.1:8719).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
    },
    /// List jobs: status, pid, uptime, restarts, last and next run.
    ///
    /// Times are relative to now ("5m00s ago", "in 3m00s"); --utc shows them
    /// as UTC times. DETAIL is cut to the terminal's width (`status` has it whole).
    List {
        /// Every job as JSON (stable for scripts), as the API's GET /api/webjobs.
        #[arg(long)]
        json: bool,
        /// Absolute UTC times instead of relative ones.
        #[arg(long)]
        utc: bool,
    },
    /// Show one job in detail (`name` or `continuous/name`).
    ///
    /// Example: `webjobs status heartbeat --json | jq .pid`.
    Status {
        /// The job: `name`, or `continuous/name` / `triggered/name` when both exist.
        job: String,
        /// Everything shown, as JSON (the API's view, the folder, the command, each instance).
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped job (removes disable.job): a continuous job runs, a
    /// triggered job's schedule resumes.
    Start {
        /// The job: `name`, or `continuous/name` / `triggered/name` when both exist.
        job: String,
    },
    /// Stop a job (writes disable.job; persists across restarts): a continuous
    /// job's process is stopped, a triggered job's schedule paused.
    Stop {
        /// The job: `name`, or `continuous/name` / `triggered/name` when both exist.
        job: String,
    },
    /// Restart a running continuous job's process (the stop protocol, then a start).
    ///
    /// Example: `webjobs restart heartbeat`.
    Restart {
        /// A continuous job.
        job: String,
    },
    /// A live view of the jobs: status, CPU and memory of each job's
    /// processes, uptime, restarts. `q` or Ctrl-C quits.
    ///
    /// Not on a terminal, it prints one view and ends.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
    },
    /// Check a jobs folder or one job without a daemon; exit 1 on any problem.
    Validate {
        /// A jobs folder, a continuous/ or triggered/ folder, or one job folder.
        path: Option<PathBuf>,
        /// The problems found, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a triggered job now (or once later: --at, --in); arguments after `--` reach the script as argv.
    ///
    /// Examples: `webjobs run report -- --month 11`, `webjobs run report --payload @order.json --wait`,
    /// `webjobs run report --in 15m`.
    Run {
        /// A triggered job.
        job: String,
        /// Wait for the run to end; the exit code tells how it ended.
        #[arg(long)]
        wait: bool,
        /// Print the run's output as it is written, until it ends.
        #[arg(long)]
        follow: bool,
        /// Print the answer as JSON (with --wait: the ended run, its result and progress).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        request: queue::RequestOptions,
        /// Arguments for the script (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Queue a run of a triggered job (it waits for a free slot whatever the overlap policy).
    ///
    /// Example: `echo '{"order": 42}' | webjobs enqueue invoice --payload - --key order-42`.
    Enqueue {
        /// A triggered job.
        job: String,
        #[command(flatten)]
        request: queue::RequestOptions,
        /// Arguments for the script (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List the queued requests of a triggered job, in the order they start.
    Queue {
        /// A triggered job.
        job: String,
        /// The requests as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the dead requests of a triggered job (failed on their last attempt).
    Dead {
        /// A triggered job.
        job: String,
        /// The requests as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue a dead request again, its attempts from the start.
    ///
    /// Example: `webjobs dead invoice` then `webjobs retry invoice rq-…`.
    Retry {
        /// A triggered job.
        job: String,
        /// The dead request's id, or the id of its last run.
        id: String,
    },
    /// Cancel the active run of a triggered job, or a queued request (by its id).
    ///
    /// Examples: `webjobs cancel report`, `webjobs cancel report rq-…`.
    Cancel {
        /// A triggered job.
        job: String,
        /// A run id or a queued request's id; default the active run.
        run: Option<String>,
    },
    /// Print a shell completion script, generated from this command line's definition.
    ///
    /// Examples: `source <(webjobs completions bash)`;
    /// `webjobs completions zsh > "${fpath[1]}/_webjobs"`; `webjobs completions fish > ~/.config/fish/completions/webjobs.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from this command line's definition.
    ///
    /// Example: `webjobs man | man -l -`.
    Man,
    /// The daemons sharing the PostgreSQL database, and jobs whose content differs between them.
    Cluster {
        /// The daemons and the skew as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The PostgreSQL database of the cluster.
    #[command(subcommand)]
    Db(DbCommand),
    /// Runs of a triggered job, newest first.
    History {
        /// A triggered job.
        job: String,
        /// The runs as JSON (as the API's history).
        #[arg(long)]
        json: bool,
    },
    /// Follow what happens to jobs and runs: queued, started, ended, retried,
    /// dead; job status changes. Ends when the daemon stops.
    ///
    /// Examples: `webjobs events`, `webjobs events --job report --json`,
    /// `webjobs events --type run.ended`.
    Events {
        /// Only this job's events.
        #[arg(long)]
        job: Option<String>,
        /// Only events whose type starts with this (`run.`, `run.ended`, `job.status`).
        #[arg(long = "type", value_name = "PREFIX")]
        kind: Option<String>,
        /// Each event's JSON on a line of its own.
        #[arg(long)]
        json: bool,
    },
    /// Notifications waiting to be delivered, and those given up, with why.
    Notifications {
        /// The outbox as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the end of a job's log (a triggered job's latest run, or --run ID).
    ///
    /// Examples: `webjobs logs heartbeat`, `webjobs logs heartbeat -n 100 --stderr`,
    /// `webjobs logs report --since 1h`, `webjobs logs --all -f`.
    Logs {
        /// The job (not with --all).
        job: Option<String>,
        #[command(flatten)]
        options: logs::LogsOptions,
    },
    /// Print the next occurrences of an NCRONTAB schedule (no daemon needed).
    Schedule {
        /// Six fields `sec min hour day month day-of-week`, or five (sec = 0).
        expr: String,
        /// Start (exclusive), RFC 3339 with offset; default now.
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// How many occurrences.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// IANA zone; default the config's `timezone`, else the machine's.
        #[arg(long, value_name = "ZONE")]
        timezone: Option<String>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the definition alone: no configuration needed.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man => return man(),
        _ => {}
    }
    let listen = match &cli.command {
        Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let serving = matches!(cli.command, Command::Serve { .. });
    let jobs_here = std::path::Path::new("jobs").is_dir();
    let installed = std::path::Path::new(INSTALLED_CONFIG);
    let file = cli.config.clone().or_else(|| installed_config(serving, cli.root.is_some(), jobs_here, installed));
    let sources = Sources { file, root: cli.root.clone(), listen };
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("webjobs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paint = term::Paint(cli.color.for_stdout());
    let mut command = cli.command;
    if let Some(job) = triggered_only(&mut command) {
        match find_kind(&config, job, JobKind::Triggered) {
            Ok(name) => *job = name,
            Err(e) => {
                eprintln!("webjobs: {e}");
                return e.exit_code();
            }
        }
    }
    let result = match command {
        Command::Serve { .. } => serve::serve(config, sources),
        Command::List { json, utc } => list::list(&config, json, utc, paint),
        Command::Status { job, json } => list::status(&config, &job, json, paint),
        Command::Start { job } => toggle::toggle(&config, &job, true),
        Command::Stop { job } => toggle::toggle(&config, &job, false),
        Command::Restart { job } => toggle::restart(&config, &job),
        Command::Top { interval } => match std::time::Duration::try_from_secs_f64(interval) {
            Ok(every) if interval >= 0.1 => top::top(&config, every, paint),
            _ => Err(CliError::Usage(format!("--interval must be at least 0.1 seconds, not {interval}")).into()),
        },
        Command::Validate { path, json } => validate::validate(&config, path.as_deref(), json),
        Command::Run { job, wait, follow, json, request, args } => {
            run::run(&config, &job, &request, &args, wait, follow, json)
        }
        Command::Enqueue { job, request, args } => queue::enqueue(&config, &job, &request, &args),
        Command::Queue { job, json } => queue::list(&config, &job, false, json),
        Command::Dead { job, json } => queue::list(&config, &job, true, json),
        Command::Retry { job, id } => queue::retry(&config, &job, &id),
        Command::Cancel { job, run } => run::cancel(&config, &job, run.as_deref()),
        Command::History { job, json } => history::history(&config, &job, json),
        Command::Cluster { json } => db::cluster(&config, json),
        Command::Completions { shell } => Ok(completions(shell)),
        Command::Man => Ok(man()),
        Command::Db(DbCommand::Migrate) => db::migrate(&config),
        Command::Events { job, kind, json } => events::events(&config, job.as_deref(), kind.as_deref(), json),
        Command::Notifications { json } => events::notifications(&config, json),
        Command::Logs { job, options } => logs::logs(&config, job.as_deref(), &options, paint),
        Command::Schedule { expr, from, count, timezone } => {
            schedule::schedule(&config, &expr, from.as_deref(), count, timezone.as_deref())
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("webjobs: {e:#}");
            error::exit_code(&e)
        }
    }
}

/// The job of a command that only triggered jobs have.
fn triggered_only(command: &mut Command) -> Option<&mut String> {
    match command {
        Command::Run { job, .. }
        | Command::Enqueue { job, .. }
        | Command::Queue { job, .. }
        | Command::Dead { job, .. }
        | Command::Retry { job, .. }
        | Command::Cancel { job, .. }
        | Command::History { job, .. } => Some(job),
        _ => None,
    }
}

fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "webjobs", &mut std::io::stdout());
    ExitCode::SUCCESS
}

fn man() -> ExitCode {
    use clap::CommandFactory;
    match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        // `webjobs man | head`: the reader had enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webjobs: cannot write the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration of an installed daemon, for client commands run on the
/// server with nothing else to go by (no `--root`, `--config`, `WEBJOBS_ROOT`,
/// `WEBJOBS_CONFIG`, and no `./jobs` folder). `serve` keeps the current
/// directory: that is the quick start's embedded default.
fn installed_config(serving: bool, root_given: bool, jobs_here: bool, installed: &std::path::Path) -> Option<PathBuf> {
    let use_it = !serving && !root_given && !jobs_here && installed.is_file();
    use_it.then(|| installed.to_path_buf())
}

/// Where the README's service install puts the daemon's configuration.
pub const INSTALLED_CONFIG: &str = "/etc/webjobs/webjobs.json";

/// Finds a job by `name` or `kind/name`; a bare name must be unambiguous.
pub(crate) fn find_job(config: &Config, spec: &str) -> Result<crate::jobs::JobDef, CliError> {
    use crate::jobs::scan_job;
    use crate::key::{JobKey, JobKind};
    let keys: Vec<JobKey> = match spec.split_once('/') {
        Some((kind, name)) => match JobKind::parse(kind) {
            Some(kind) => vec![JobKey::new(kind, name)],
            None => {
                return Err(CliError::NotFound(format!(
                    "unknown job type `{kind}` in `{spec}`: use continuous/<name> or triggered/<name>"
                )));
            }
        },
        None => JobKind::ALL.iter().map(|k| JobKey::new(*k, spec)).collect(),
    };
    let found: Vec<_> = keys.iter().filter_map(|k| scan_job(config, k)).collect();
    match found.len() {
        0 => {
            let name = spec.rsplit('/').next().unwrap_or(spec);
            let known: Vec<String> = keys.iter().flat_map(|k| crate::jobs::job_names(config, k.kind)).collect();
            Err(CliError::NotFound(format!(
                "no job named `{spec}` in {}{}",
                config.jobs_dir.display(),
                did_you_mean(name, &known)
            )))
        }
        1 => Ok(found.into_iter().next().expect("one job")),
        _ => Err(CliError::NotFound(format!(
            "`{spec}` is both a continuous and a triggered job: say continuous/{spec} or triggered/{spec}"
        ))),
    }
}

/// Finds a job that must be of `kind` for a command (`run`, `restart`…); a
/// job of the other kind is named with the commands that apply to it.
pub(crate) fn find_kind(config: &Config, spec: &str, kind: crate::key::JobKind) -> Result<String, CliError> {
    use crate::key::JobKind;
    let bare = spec.strip_prefix(&format!("{}/", kind.as_str())).unwrap_or(spec);
    let other = match kind {
        JobKind::Continuous => JobKind::Triggered,
        JobKind::Triggered => JobKind::Continuous,
    };
    if crate::jobs::scan_job(config, &crate::key::JobKey::new(kind, bare)).is_some() {
        return Ok(bare.to_string());
    }
    if crate::jobs::scan_job(config, &crate::key::JobKey::new(other, bare)).is_some() {
        let instead = match other {
            JobKind::Continuous => "use start, stop or restart",
            JobKind::Triggered => "use run, cancel or start/stop (its schedule)",
        };
        return Err(CliError::Usage(format!("`{bare}` is a {} job; {instead}", other.as_str())));
    }
    let known = crate::jobs::job_names(config, kind);
    Err(CliError::NotFound(format!(
        "no {} job named `{bare}` in {}{}",
        kind.as_str(),
        config.jobs_dir.display(),
        did_you_mean(bare, &known)
    )))
}

/// `; did you mean `x`?` with the known names closest to `name`, or nothing.
fn did_you_mean(name: &str, known: &[String]) -> String {
    let mut close: Vec<(f64, &String)> = known
        .iter()
        .map(|k| (strsim::jaro_winkler(&name.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(score, _)| *score >= 0.8)
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    close.dedup_by(|a, b| a.1 == b.1);
    match close.iter().take(3).map(|(_, k)| format!("`{k}`")).collect::<Vec<_>>().as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        many => format!("; did you mean one of {}?", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_commands_on_a_server_find_the_installed_configuration() {
        let d = tempfile::tempdir().unwrap();
        let installed = d.path().join("webjobs.json");
        assert_eq!(installed_config(false, false, false, &installed), None, "none installed");
        std::fs::write(&installed, "{}").unwrap();
        assert_eq!(installed_config(false, false, false, &installed), Some(installed.clone()));
        assert_eq!(installed_config(false, true, false, &installed), None, "--root or WEBJOBS_ROOT wins");
        assert_eq!(installed_config(false, false, true, &installed), None, "a ./jobs folder is the checkout's");
        assert_eq!(installed_config(true, false, false, &installed), None, "serve keeps the current directory");
    }

    #[test]
    fn every_command_option_and_argument_is_described() {
        use clap::CommandFactory;
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.get_about().is_none() && path != " webjobs" {
                missing.push(path.clone());
            }
            for arg in command.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                check(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without a description in --help: {missing:?}");
    }

    #[test]
    fn a_mistyped_name_is_answered_with_the_closest_names() {
        let known = ["heartbeat", "py-worker", "py-report", "node-greet"].map(String::from);
        assert_eq!(did_you_mean("hearbeat", &known), "; did you mean `heartbeat`?");
        assert_eq!(did_you_mean("py-wroker", &known), "; did you mean one of `py-worker`, `py-report`?");
        assert_eq!(did_you_mean("zzz", &known), "");
    }
}
