//! `noise-aware`: the earlier default. The baseline runs K times; sigma is the sample standard
//! deviation of those runs and the bar is max(2 sigma, noise_floor). A candidate whose first run
//! gains more than the bar is re-run once with seed+1; it is kept when the mean of its two runs
//! still gains more than the bar. With two baseline runs it keeps about one null change in eight.

use super::{Judged, Last, Look, Measured, Noise, Rule, Runs, Verdict, mean_std};
use crate::config::Direction;

pub struct NoiseAware {
    pub direction: Direction,
    /// The smallest gain that counts.
    pub floor: f64,
    /// The config's `baseline_runs` (at least two are run).
    pub baseline_runs: u32,
}

impl Rule for NoiseAware {
    fn describe(&self) -> String {
        format!("noise-aware ({} baseline runs, bar = max(2 sigma, {}), confirmation run)", self.baseline_runs, self.floor)
    }

    fn baseline_runs(&self) -> u64 {
        self.baseline_runs.max(2) as u64
    }

    fn bar(&self, sigma: f64) -> f64 {
        (2.0 * sigma).max(self.floor)
    }

    fn baseline_note(&self, sigma: f64, _noise: Noise) -> String {
        format!("sigma {sigma:.6}, bar {:.6}", self.bar(sigma))
    }

    fn runs(&self) -> Runs {
        Runs::AgainstTheBest
    }

    /// After the first run: a gain over the bar asks for the confirmation run. After it: the
    /// mean of the two runs must still clear the bar.
    fn look(&self, look: &Look<'_>) -> Judged {
        let (best, bar) = (look.best, look.bar);
        if let [m1] = look.candidate {
            let gain = self.direction.gain(best, *m1);
            let verdict = if gain > bar { Verdict::Confirm } else { Verdict::Discard };
            return Judged { verdict, why: format!("gain {gain:.6} does not clear the bar {bar:.6}"), bar };
        }
        let (mean, _) = mean_std(look.candidate);
        let gain = self.direction.gain(best, mean);
        let verdict = if gain > bar { Verdict::Keep } else { Verdict::Discard };
        Judged { verdict, why: format!("runs {:?}, mean gain {gain:.6} vs bar {bar:.6}", look.candidate), bar }
    }

    fn last(&self, best: Measured<'_>, candidate: Measured<'_>, bar: f64, _noise: Noise, _min_runs: usize) -> Last {
        let gain = self.direction.gain(best.value, candidate.value);
        Last { keep: gain > bar, gain, bar }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_aware_uses_two_sigma_and_floor() {
        let rule = NoiseAware { direction: Direction::Lower, floor: 0.001, baseline_runs: 2 };
        let (_, sd) = mean_std(&[1.00, 1.02]);
        let b = rule.bar(sd);
        assert!((b - 2.0 * sd).abs() < 1e-12);
        let verdict = |best: f64, candidate: &[f64]| rule.look(&Look { best, best_runs: &[], candidate, runs: candidate.len(), bar: b, noise: Noise::default() }).verdict;
        assert_eq!(verdict(1.01, &[0.99]), Verdict::Discard);
        assert_eq!(verdict(1.01, &[0.95]), Verdict::Confirm);
        assert_eq!(verdict(1.01, &[0.95, 1.02]), Verdict::Discard);
        assert_eq!(verdict(1.01, &[0.95, 0.96]), Verdict::Keep);
        assert_eq!(rule.bar(0.0), 0.001);
        let noise = Noise { sigma: 0.01, df: 12.0, runs: 16, groups: 4 };
        assert!(!rule.last(Measured { value: 2.0, runs: &[] }, Measured { value: 1.99, runs: &[] }, 0.02, noise, 2).keep);
        assert!(rule.last(Measured { value: 2.0, runs: &[] }, Measured { value: 1.97, runs: &[] }, 0.02, noise, 2).keep);
    }
}
