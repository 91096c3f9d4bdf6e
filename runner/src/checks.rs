//! Checks before a keep (`checks_command`, like pi-autoresearch's checks.sh: tests, lint, a
//! memory cap): run in the worktree of a candidate that passed the keep rule. The code under
//! research is hostile, and a check runs it (a test does), so the checks run in the build
//! sandbox: they read the toolchain, the system and the worktree, write the worktree and the
//! target directory, and reach no network, the run's state (`.autoresearch/`) or the data. They
//! hold the build lock, since a `cargo` check shares the target directory with the builds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config::ResearchConfig;
use crate::executor::build_sandbox;
use crate::process::{self, FileLock, Output};

/// What the checks of a candidate came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Passed,
    /// Why (the exit code, or the timeout), and the last lines of the output.
    Failed { why: String, tail: String },
    /// Ctrl-C or `stop` while they ran.
    Interrupted,
}

/// What the checks are told about the candidate (environment variables).
pub struct Candidate<'a> {
    pub node: &'a str,
    pub commit: &'a str,
    pub metric: Option<f64>,
    pub memory_mb: Option<f64>,
}

/// Where the output of a node's checks goes.
pub fn log_path(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{node}-checks.log"))
}

/// Runs `cfg.checks_command` in `worktree` (nothing to run: `Passed`), its output into `log`.
pub fn run(cfg: &ResearchConfig, root: &Path, worktree: &Path, who: &Candidate<'_>, log: &Path) -> Result<Checked> {
    let command = cfg.checks_command.trim();
    if command.is_empty() {
        return Ok(Checked::Passed);
    }
    let timeout = Duration::from_secs(cfg.checks_timeout_seconds.max(1));
    let t0 = Instant::now();
    let Some(_lock) = FileLock::acquire(&crate::layout::build_lock(root), || process::interrupted() || t0.elapsed() >= timeout)? else {
        return Ok(if process::interrupted() { Checked::Interrupted } else { Checked::Failed { why: "timed out waiting for the build lock".into(), tail: String::new() } });
    };
    let target = crate::layout::target_dir(root);
    let sandbox = match build_sandbox::prepare(worktree, &target, cfg.require_sandbox) {
        Ok(s) => s,
        Err(why) => return Ok(Checked::Failed { why, tail: String::new() }),
    };
    let mut env = build_sandbox::build_env(&target);
    env.extend([
        ("AUTORESEARCH_NODE".to_string(), who.node.to_string()),
        ("AUTORESEARCH_COMMIT".to_string(), who.commit.to_string()),
        ("AUTORESEARCH_METRIC".to_string(), who.metric.map(|m| format!("{m:.6}")).unwrap_or_default()),
        ("AUTORESEARCH_PEAK_MEMORY_MB".to_string(), who.memory_mb.map(|m| format!("{m:.1}")).unwrap_or_default()),
    ]);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let left = timeout.saturating_sub(t0.elapsed());
    let f = process::run_shell_in(sandbox.as_ref(), command, worktree, &env, Output::Log(log), left, |_| Ok(()), |_| {})?;
    let tail = || process::tail(log, 20);
    Ok(match (f.interrupted, f.timed_out, f.code) {
        (true, _, _) => Checked::Interrupted,
        (_, true, _) => Checked::Failed { why: format!("timed out after {} s", cfg.checks_timeout_seconds), tail: tail() },
        (_, _, Some(0)) => Checked::Passed,
        (_, _, code) => Checked::Failed { why: code.map(|c| format!("exit {c}")).unwrap_or_else(|| "killed by a signal".into()), tail: tail() },
    })
}
