//! Why a command failed, and the exit code each reason has (one place).

use std::process::ExitCode;

/// A command's failure that has an exit code of its own. Commands return
/// `anyhow::Result`; `main` finds this inside to choose the code (any other
/// error is 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2: the command line cannot be acted on.
    #[error("{0}")]
    Usage(String),
    /// Exit 3: no such job (or run).
    #[error("{0}")]
    NotFound(String),
    /// Exit 4: the daemon refused (a run is active, WEBJOBS_STOPPED, nothing to cancel).
    #[error("{0}")]
    Refused(String),
    /// Exit 5: the daemon cannot be reached, or does not answer.
    #[error("{0}")]
    Daemon(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::Refused(_) => 4,
            CliError::Daemon(_) => 5,
        })
    }

    /// The error for an HTTP answer of the daemon that is not a success.
    pub fn from_status(status: u16, message: String) -> anyhow::Error {
        match status {
            404 => CliError::NotFound(message).into(),
            409 => CliError::Refused(message).into(),
            _ => anyhow::anyhow!("the daemon answered {status}: {message}"),
        }
    }
}

/// The exit code of a failed command.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if let Some(e) = e.downcast_ref::<CliError>() {
        return e.exit_code();
    }
    if e.downcast_ref::<super::client::ClientError>().is_some() {
        return CliError::Daemon(String::new()).exit_code();
    }
    ExitCode::FAILURE
}
