//! Keep rules: when does a candidate replace the best? A rule owns its decision end to end
//! behind [`Rule`]: its looks at the measurements, the runs it asks for, its line in the run
//! header, its word on the baseline. The worker (`runloop::worker`) only runs what a rule asks
//! for, and the config only names one (`config::KeepRuleKind`); [`rule`] is the one registry.
//!
//! - `strict` (`strict.rs`): the reference rule. One run; keep when the metric is strictly better.
//! - `significant` (`significant.rs`, the default): a one-sided t-test of the gain, with the
//!   noise pooled over every repeated run, run again while the answer is open.
//! - `noise-aware` (`noise_aware.rs`): the earlier default: a bar of max(2 sigma, noise_floor)
//!   from the baseline's runs, and one confirmation run.
//!
//! The best's value is the mean of its runs. The statistics they share are in `stats.rs`.

mod noise_aware;
pub mod significant;
mod stats;
mod strict;

use crate::config::{KeepRuleKind, ResearchConfig};
pub use stats::{Noise, mean_std, pooled};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Keep,
    Discard,
    /// Beats the bar once (or the answer is open): run the candidate again with another seed.
    Confirm,
    /// The answer is open and a run of the best narrows it most: run the best again.
    ConfirmBest,
}

/// What a rule needs from the worker to decide an experiment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Runs {
    /// Runs of the candidate, compared with the best's value (the mean of its runs): one look
    /// after the first run, one after a confirmation run if the look asks for one.
    AgainstTheBest,
    /// A sequential test against the best's runs (from the database, and those the decision
    /// asks for): a look after every run, of the candidate or of the best, until it decides.
    Tested,
}

/// What the worker knows when a rule looks at a candidate.
#[derive(Debug, Clone, Copy)]
pub struct Look<'a> {
    /// The best's value (the mean of its runs).
    pub best: f64,
    /// The best's runs a test compares with ([`Runs::Tested`]).
    pub best_runs: &'a [f64],
    /// The candidate's runs so far.
    pub candidate: &'a [f64],
    /// Runs of this decision so far: the candidate's and the best's it asked for.
    pub runs: usize,
    /// The keep bar from the baseline's noise ([`Rule::bar`]).
    pub bar: f64,
    pub noise: Noise,
}

/// A rule's answer to a look.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub verdict: Verdict,
    /// Why, for the node's insight.
    pub why: String,
    /// The gain the candidate had to clear.
    pub bar: f64,
}

/// What a node measured: the value it is compared by (the mean of its runs) and the runs a
/// test looks at.
#[derive(Debug, Clone, Copy)]
pub struct Measured<'a> {
    pub value: f64,
    pub runs: &'a [f64],
}

/// A rule's last word on a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Last {
    pub keep: bool,
    /// The candidate's gain over the best (positive is better, whichever the direction).
    pub gain: f64,
    /// The gain it had to clear.
    pub bar: f64,
}

/// A keep rule with the settings the research config gives it.
pub trait Rule: Send + Sync {
    /// The run header's `keep rule:` line.
    fn describe(&self) -> String;
    /// How many seeds the baseline runs (the noise is measured from them, where a rule needs it).
    fn baseline_runs(&self) -> u64;
    /// The gain a candidate must exceed, given the baseline's standard deviation `sigma`.
    fn bar(&self, sigma: f64) -> f64;
    /// The baseline's log line, after its `sigma`: what the rule measured of the noise.
    fn baseline_note(&self, sigma: f64, noise: Noise) -> String;
    /// What it needs from the worker to decide an experiment.
    fn runs(&self) -> Runs;
    /// Its verdict on a candidate so far.
    fn look(&self, look: &Look<'_>) -> Judged;
    /// Its word on a candidate whose runs are all in, against the best (`bar`: the keep bar,
    /// `min_runs`: the runs a keep needs). The loop asks it when a result arrives after another
    /// keep moved the best (its candidates need two runs), and for a result recorded by hand
    /// (one run: a confirmation would need another run by hand, so one look decides).
    fn last(&self, best: Measured<'_>, candidate: Measured<'_>, bar: f64, noise: Noise, min_runs: usize) -> Last;
}

/// The one registry: the rule the config names, with its settings. A new rule is a file in this
/// folder implementing [`Rule`], a variant of `config::KeepRuleKind` and an arm here.
pub fn rule(cfg: &ResearchConfig) -> Box<dyn Rule> {
    match cfg.keep_rule {
        KeepRuleKind::Strict => Box::new(strict::Strict { direction: cfg.direction }),
        KeepRuleKind::NoiseAware => Box::new(noise_aware::NoiseAware { direction: cfg.direction, floor: cfg.noise_floor, baseline_runs: cfg.baseline_runs }),
        KeepRuleKind::Significant => Box::new(significant::Significant {
            direction: cfg.direction,
            floor: cfg.noise_floor,
            significance: cfg.significance,
            max_runs: cfg.max_candidate_runs,
            baseline_runs: cfg.baseline_runs,
        }),
    }
}
