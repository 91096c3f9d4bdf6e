//! What a worker hands back to the loop for a node (`Decision`), and the steps that shape it
//! whatever the keep rule: a failed run's status, the checks before a keep, the summary
//! without its held-out figures.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::config::ResearchConfig;
use crate::db::{Node, Run, Status};
use crate::executor::Outcome;

/// A worker's result.
#[derive(Debug, Clone)]
pub struct Decision {
    pub status: Status,
    pub metric: Option<f64>,
    pub summary: Option<Value>,
    pub memory_mb: Option<f64>,
    pub insight: String,
    pub runs: Vec<Run>,
    /// Stopped by Ctrl-C (or the runner stopping): recorded as a crash, and the loop stops.
    pub interrupted: bool,
    /// Baseline: the standard deviation of its runs.
    pub sigma: Option<f64>,
    /// Held-out scores: the baseline's seeds, or a kept node's held-out run (never shown to a
    /// proposer).
    pub heldout: Vec<f64>,
    /// The gain the decision asked for (the keep bar), where a gain was measured.
    pub bar: Option<f64>,
    /// The throughput guard's look at the decision (`throughput::Check`, and the best's run
    /// beside the candidate when it was flagged); None where it did not look.
    pub throughput: Option<Value>,
}

impl Decision {
    /// A node that ends with no measurement: a crash or a rejection, and why.
    pub fn unmeasured(status: Status, insight: impl Into<String>) -> Decision {
        Decision {
            status,
            metric: None,
            summary: None,
            memory_mb: None,
            insight: insight.into(),
            runs: Vec::new(),
            interrupted: false,
            sigma: None,
            heldout: Vec::new(),
            bar: None,
            throughput: None,
        }
    }

    pub(super) fn failed(out: &Outcome, runs: Vec<Run>) -> Decision {
        let (status, insight) = failure(out);
        Decision { runs, interrupted: matches!(out, Outcome::Interrupted), ..Decision::unmeasured(status, insight) }
    }

    /// The bar of a decided experiment (kept or discarded): the gain its rule asked for. A
    /// failure has none, whatever its runs measured.
    pub fn decided_bar(&self) -> Option<f64> {
        if matches!(self.status, Status::Keep | Status::Discard | Status::ChecksFailed) { self.bar } else { None }
    }
}

/// A summary without its held-out figures: they are stored apart, where no proposer looks.
pub fn without_heldout(mut summary: Value) -> Value {
    if let Value::Object(m) = &mut summary {
        m.remove("heldout");
        m.remove("heldout_bpb");
    }
    summary
}

/// Status and insight for a failed run.
pub fn failure(out: &Outcome) -> (Status, String) {
    match out {
        Outcome::Causality { tail } => (Status::Rejected, format!("causality violation (harness exit 4)\n{tail}")),
        Outcome::OutOfMemory { tail } => (Status::Crash, format!("out of memory, also at half the device batch\n{tail}")),
        Outcome::Timeout { tail } => (Status::Crash, format!("timeout: killed at the hard timeout\n{tail}")),
        Outcome::Crash { reason, tail } => (Status::Crash, format!("{reason}\n{tail}")),
        Outcome::Interrupted => (Status::Crash, "interrupted by the user".into()),
        Outcome::Ok { .. } => (Status::Keep, String::new()),
    }
}

/// Runs the checks of a candidate that passed the keep rule (`checks_command`); when they fail,
/// the decision becomes `checks_failed`, their reason and output first in its insight.
pub fn apply_checks(cfg: &ResearchConfig, root: &Path, worktree: &Path, node: &Node, d: &mut Decision) -> Result<()> {
    if d.status != Status::Keep || cfg.checks_command.trim().is_empty() {
        return Ok(());
    }
    let state_dir = crate::layout::Paths::new(root, cfg).state_dir;
    let log = crate::checks::log_path(&state_dir, &node.name());
    let commit = node.commit.clone().unwrap_or_default();
    let who = crate::checks::Candidate { node: &node.name(), commit: &commit, metric: d.metric, memory_mb: d.memory_mb };
    match crate::checks::run(cfg, root, worktree, &who, &log)? {
        crate::checks::Checked::Passed => d.insight.push_str("; checks passed"),
        crate::checks::Checked::Interrupted => d.interrupted = true,
        crate::checks::Checked::Failed { why, tail } => {
            d.status = Status::ChecksFailed;
            // The first line says why (the results row takes it, with the output's last line).
            d.insight = format!("checks failed ({why}): not kept\nthe rule said keep: {}\nchecks output ({}):\n{tail}", d.insight, log.display());
        }
    }
    Ok(())
}

