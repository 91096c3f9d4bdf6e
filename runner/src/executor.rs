//! One experiment run: build and run the harness (or the configured `experiment_command`) in the
//! node's worktree under the hard timeout, then read the JSON summary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::config::ResearchConfig;
use crate::process::{self, Output, shell_quote};

/// Harness exit codes (see `harness --help`).
pub mod harness_exit {
    pub const DIVERGED: i32 = 1;
    pub const OUT_OF_MEMORY: i32 = 3;
    pub const CAUSALITY: i32 = 4;
}

/// What one run of the experiment command produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok { metric: f64, memory_mb: Option<f64>, summary: Value },
    /// Out of memory (exit 3): the caller retries once with a halved device batch.
    OutOfMemory { tail: String },
    /// The harness refused the model (exit 4): a trainer that looks at future tokens.
    Causality { tail: String },
    Crash { reason: String, tail: String },
    Timeout { tail: String },
    Interrupted,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::OutOfMemory { .. } => "oom",
            Outcome::Causality { .. } => "causality",
            Outcome::Crash { .. } => "crash",
            Outcome::Timeout { .. } => "timeout",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Everything a run needs besides the config.
pub struct RunSpec<'a> {
    pub cfg: &'a ResearchConfig,
    pub repo_root: &'a Path,
    pub worktree: &'a Path,
    pub profile: &'a Path,
    pub seed: u64,
    pub batch_scale: f64,
    pub summary_json: PathBuf,
    pub log: PathBuf,
    pub timeout: Duration,
}

/// The shared cargo target directory: Burn compiles once for all worktrees.
pub fn target_dir(repo_root: &Path) -> PathBuf {
    repo_root.join("target")
}

/// The default experiment: build the harness, then run it with the run's flags.
pub fn default_command(cfg: &ResearchConfig) -> String {
    // `--workspace`, like the README's build and test commands: building `-p harness` alone
    // resolves features of shared crates differently and would compile Burn a second time.
    let features = if cfg.features.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = cfg.features.split([',', ' ']).filter(|f| !f.is_empty()).map(|f| format!("harness/{f}")).collect();
        format!(" --features {}", shell_quote(&list.join(",")))
    };
    let mut c = format!(
        "cargo build --release --locked --workspace{features} && \"{{target_dir}}/release/harness\" --profile {{profile}} --budget {{budget}} --seed {{seed}} --summary-json {{summary_json}} --device-batch-scale {{device_batch_scale}}",
    );
    if !cfg.device.is_empty() {
        c.push_str(" --device {device}");
    }
    if !cfg.cache_dir.is_empty() {
        c.push_str(" --cache-dir {cache_dir}");
    }
    c
}

/// Fills the placeholders of an experiment command (values shell-quoted).
pub fn render(template: &str, spec: &RunSpec<'_>) -> String {
    let budget = spec.cfg.budget().map(|b| b.spec()).unwrap_or_else(|_| spec.cfg.budget.clone());
    let pairs = [
        ("{summary_json}", spec.summary_json.display().to_string()),
        ("{seed}", spec.seed.to_string()),
        ("{budget}", budget),
        ("{profile}", spec.profile.display().to_string()),
        ("{device}", spec.cfg.device.clone()),
        ("{device_batch_scale}", format!("{}", spec.batch_scale)),
        ("{cache_dir}", spec.cfg.cache_dir.clone()),
        ("{target_dir}", target_dir(spec.repo_root).display().to_string()),
        ("{worktree}", spec.worktree.display().to_string()),
    ];
    let mut out = template.to_string();
    for (k, v) in pairs {
        // {target_dir} sits inside double quotes in the default command: no extra quoting.
        let v = if k == "{target_dir}" { v } else { shell_quote(&v) };
        out = out.replace(k, &v);
    }
    out
}

pub fn env_for(spec: &RunSpec<'_>) -> Vec<(String, String)> {
    vec![
        ("CARGO_TARGET_DIR".into(), target_dir(spec.repo_root).display().to_string()),
        ("AUTORESEARCH_SUMMARY_JSON".into(), spec.summary_json.display().to_string()),
        ("AUTORESEARCH_SEED".into(), spec.seed.to_string()),
        ("AUTORESEARCH_BUDGET".into(), spec.cfg.budget.clone()),
        ("AUTORESEARCH_DEVICE_BATCH_SCALE".into(), format!("{}", spec.batch_scale)),
    ]
}

/// Runs the experiment once. `on_start` receives the process group id.
pub fn run_once(spec: &RunSpec<'_>, on_start: impl FnMut(u32) -> Result<()>, tick: impl FnMut(Duration)) -> Result<(Outcome, f64, Option<i32>)> {
    let template = if spec.cfg.experiment_command.trim().is_empty() {
        default_command(spec.cfg)
    } else {
        spec.cfg.experiment_command.clone()
    };
    let command = render(&template, spec);
    let _ = std::fs::remove_file(&spec.summary_json);
    let fin = process::run_shell(&command, spec.worktree, &env_for(spec), Output::Log(&spec.log), spec.timeout, on_start, tick)?;
    let tail = || process::tail(&spec.log, 40);
    let outcome = if fin.interrupted {
        Outcome::Interrupted
    } else if fin.timed_out {
        Outcome::Timeout { tail: tail() }
    } else {
        match fin.code {
            Some(0) => read_summary(&spec.summary_json, &spec.cfg.metric, tail),
            Some(harness_exit::OUT_OF_MEMORY) => Outcome::OutOfMemory { tail: tail() },
            Some(harness_exit::CAUSALITY) => Outcome::Causality { tail: tail() },
            Some(harness_exit::DIVERGED) => Outcome::Crash { reason: "exit 1 (FAIL: diverged, or the build failed)".into(), tail: tail() },
            Some(c) => Outcome::Crash { reason: format!("exit {c}"), tail: tail() },
            None => Outcome::Crash { reason: "killed by a signal".into(), tail: tail() },
        }
    };
    Ok((outcome, fin.seconds, fin.code))
}

fn read_summary(path: &Path, metric: &str, tail: impl Fn() -> String) -> Outcome {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Outcome::Crash { reason: format!("exit 0 but no summary JSON at {}", path.display()), tail: tail() },
    };
    let summary: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return Outcome::Crash { reason: format!("unreadable summary JSON: {e}"), tail: tail() },
    };
    match summary.get(metric).and_then(Value::as_f64) {
        Some(m) if m.is_finite() => {
            let memory_mb = summary.get("peak_vram_mb").and_then(Value::as_f64);
            Outcome::Ok { metric: m, memory_mb, summary }
        }
        _ => Outcome::Crash { reason: format!("the summary JSON has no finite `{metric}`"), tail: tail() },
    }
}
