//! `strict`: the reference rule. One run; keep when the metric is strictly better. No noise is
//! measured, so the baseline runs once.

use super::{Judged, Last, Look, Measured, Noise, Rule, Runs, Verdict};
use crate::config::Direction;

pub struct Strict {
    pub direction: Direction,
}

impl Rule for Strict {
    fn describe(&self) -> String {
        "strict (keep only a strictly better metric)".to_string()
    }

    fn baseline_runs(&self) -> u64 {
        1
    }

    fn bar(&self, _sigma: f64) -> f64 {
        0.0
    }

    fn baseline_note(&self, sigma: f64, _noise: Noise) -> String {
        format!("sigma {sigma:.6}, bar {:.6}", self.bar(sigma))
    }

    fn runs(&self) -> Runs {
        Runs::AgainstTheBest
    }

    /// One look, after the first run: any gain keeps.
    fn look(&self, look: &Look<'_>) -> Judged {
        let gain = self.direction.gain(look.best, look.candidate[0]);
        if gain > 0.0 {
            Judged { verdict: Verdict::Keep, why: format!("gain {gain:.6} over {:.6}", look.best), bar: look.bar }
        } else {
            Judged { verdict: Verdict::Discard, why: format!("gain {gain:.6} does not clear the bar {:.6}", look.bar), bar: look.bar }
        }
    }

    fn last(&self, best: Measured<'_>, candidate: Measured<'_>, _bar: f64, _noise: Noise, _min_runs: usize) -> Last {
        let gain = self.direction.gain(best.value, candidate.value);
        Last { keep: gain > 0.0, gain, bar: 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(best: f64, candidate: &[f64], bar: f64) -> Look<'_> {
        Look { best, best_runs: &[], candidate, runs: candidate.len(), bar, noise: Noise::default() }
    }

    #[test]
    fn strict_needs_strictly_better() {
        let rule = Strict { direction: Direction::Lower };
        let b = rule.bar(0.1);
        assert_eq!(rule.look(&look(1.0, &[0.999], b)).verdict, Verdict::Keep);
        assert_eq!(rule.look(&look(1.0, &[1.0], b)).verdict, Verdict::Discard);
        assert_eq!(Strict { direction: Direction::Higher }.look(&look(1.0, &[1.1], b)).verdict, Verdict::Keep);
        let noise = Noise { sigma: 0.01, df: 12.0, runs: 16, groups: 4 };
        assert_eq!(rule.last(Measured { value: 2.0, runs: &[] }, Measured { value: 1.9999, runs: &[] }, 0.5, noise, 2), Last { keep: true, gain: 2.0 - 1.9999, bar: 0.0 });
    }
}
