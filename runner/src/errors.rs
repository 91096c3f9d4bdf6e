//! Typed errors that decide the process exit code. Everything else is an `anyhow` error (exit 1).

use thiserror::Error;

/// Exit codes of `autoresearch` (also listed in `--help`).
pub mod code {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const REPO_STATE: i32 = 3;
    pub const CANCELLED: i32 = 4;
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, Error)]
pub enum CliError {
    /// A bad flag value or config key: the message names it and says what is accepted.
    #[error("{0}")]
    Usage(String),
    /// The repository is not in the state the command needs (branch exists, no run, dirty...).
    #[error("{0}")]
    RepoState(String),
    /// The user answered "no" at the confirmation prompt.
    #[error("cancelled")]
    Cancelled,
    /// SIGINT/SIGTERM during a run.
    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => code::USAGE,
            CliError::RepoState(_) => code::REPO_STATE,
            CliError::Cancelled => code::CANCELLED,
            CliError::Interrupted => code::INTERRUPTED,
        }
    }
}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    CliError::Usage(msg.into()).into()
}

pub fn repo_state(msg: impl Into<String>) -> anyhow::Error {
    CliError::RepoState(msg.into()).into()
}

/// The exit code for an error that reached `main`.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return e.exit_code();
        }
    }
    code::FAILURE
}
