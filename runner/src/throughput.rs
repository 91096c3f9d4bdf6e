//! Like with like: at a time budget the score follows the steps a run gets, so a candidate
//! measured while the machine ran slower (or faster) than when the best was measured wins or
//! loses by the machine. The guard compares the tokens per second of a decision's runs (the
//! scorer's `tokens_per_sec`) with their spread: the standard deviation of a configuration's
//! throughput from run to run, pooled over every node with two runs or more (the baseline's
//! seeds first). A difference beyond two standard errors of it (and beyond 2 % of the best's,
//! for runs that repeat to the token) is flagged, and the worker runs the best again beside the
//! candidate, so that the two are measured on the machine as it is now.

use std::path::Path;

use serde::Serialize;
use contract::summary::RunSummary;
use serde_json::Value;

use crate::curve::kilo;
use crate::db::{Db, Run};
use crate::keep::{Noise, mean_std, pooled};

/// A relative difference that is never flagged, whatever the spread: runs that repeat exactly
/// (a spread of 0) would otherwise flag any difference at all.
pub const RELATIVE_FLOOR: f64 = 0.02;

/// The tokens per second a run's summary reports.
pub fn of_summary(summary: &Value) -> Option<f64> {
    RunSummary::from_value(summary)?.tokens_per_sec.filter(|t| t.is_finite() && *t > 0.0)
}

/// The tokens per second of a finished run, from its summary in the run's state directory.
pub fn of_run(state_dir: &Path, node: &str, run: &Run) -> Option<f64> {
    if run.outcome != "ok" {
        return None;
    }
    let path = crate::layout::run_files(state_dir, node, &run.attempt).summary_json;
    of_summary(&serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?)
}

/// The run-to-run spread of throughput, pooled over every node with two runs or more.
pub fn spread(db: &Db, state_dir: &Path) -> anyhow::Result<Noise> {
    let mut groups = Vec::new();
    for n in db.nodes()? {
        let tps: Vec<f64> = db.runs(n.id)?.iter().filter_map(|r| of_run(state_dir, &n.name(), r)).collect();
        groups.push(tps);
    }
    Ok(pooled(&groups))
}

/// One look at a decision's throughput.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// Mean tokens per second of the candidate's runs and of the best's.
    pub candidate: f64,
    pub best: f64,
    /// The pooled run-to-run standard deviation and its degrees of freedom.
    pub spread: f64,
    pub df: f64,
    /// The difference beyond which it is flagged.
    pub tolerance: f64,
    pub flagged: bool,
}

/// Compares the candidate's runs with the best's; None when either has no throughput.
pub fn check(best: &[f64], candidate: &[f64], spread: Noise) -> Option<Check> {
    if best.is_empty() || candidate.is_empty() {
        return None;
    }
    let (b, _) = mean_std(best);
    let (c, _) = mean_std(candidate);
    let se = spread.sigma * (1.0 / best.len() as f64 + 1.0 / candidate.len() as f64).sqrt();
    let tolerance = (2.0 * se).max(RELATIVE_FLOOR * b);
    Some(Check { candidate: c, best: b, spread: spread.sigma, df: spread.df, tolerance, flagged: (c - b).abs() > tolerance })
}

impl Check {
    /// `3.1k tok/s against the best's 3.5k (spread 0.1k, tolerance 0.2k)`.
    pub fn describe(&self) -> String {
        format!("{} tok/s against the best's {} (spread {}, tolerance {})", kilo(self.candidate), kilo(self.best), kilo(self.spread), kilo(self.tolerance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_beyond_the_spread_is_flagged() {
        // The baseline's four runs: 3400-3600 tok/s (sd 85); a candidate at 3000.
        let spread = pooled(&[vec![3400.0, 3500.0, 3600.0, 3450.0]]);
        let c = check(&[3400.0, 3500.0, 3600.0, 3450.0], &[3000.0], spread).unwrap();
        assert!(c.flagged && (c.best - 3487.5).abs() < 1e-9, "{c:?}");
        assert!((c.tolerance - 2.0 * spread.sigma * (0.25f64 + 1.0).sqrt()).abs() < 1e-9);
        assert!(!check(&[3400.0, 3500.0, 3600.0, 3450.0], &[3400.0], spread).unwrap().flagged);
        // Runs that repeat exactly: only beyond 2 %.
        let none = Noise::default();
        assert!(!check(&[1000.0], &[985.0], none).unwrap().flagged);
        assert!(check(&[1000.0], &[970.0], none).unwrap().flagged);
        assert_eq!(check(&[], &[1.0], none), None);
        assert_eq!(c.describe(), "3.0k tok/s against the best's 3.5k (spread 85, tolerance 191)");
        assert_eq!(of_summary(&serde_json::json!({"tokens_per_sec": 3589.6})), Some(3589.6));
        assert_eq!(of_summary(&serde_json::json!({"val_bpb": 1.0})), None);
    }
}
