//! Keep rules: when does a candidate replace the best?
//!
//! - `strict`: the reference rule. One run; keep when the metric is strictly better.
//! - `noise-aware` (default): the baseline runs K times with seeds seed, seed+1, ...; sigma is the
//!   sample standard deviation of those runs and the bar is max(2 sigma, noise_floor). A
//!   candidate whose first run (seed) gains more than the bar is re-run once with seed+1; it is
//!   kept only when the mean of its two runs still gains more than the bar. The best's value is
//!   the mean of its runs.

use crate::config::{Direction, KeepRule};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Keep,
    Discard,
    /// Beats the bar once: run again with another seed before keeping.
    Confirm,
}

/// The gain a candidate must exceed.
pub fn bar(rule: KeepRule, sigma: f64, floor: f64) -> f64 {
    match rule {
        KeepRule::Strict => 0.0,
        KeepRule::NoiseAware => (2.0 * sigma).max(floor),
    }
}

/// Verdict after the candidate's first run.
pub fn first(rule: KeepRule, dir: Direction, best: f64, metric: f64, bar: f64) -> Verdict {
    let gain = dir.gain(best, metric);
    match rule {
        KeepRule::Strict if gain > 0.0 => Verdict::Keep,
        KeepRule::NoiseAware if gain > bar => Verdict::Confirm,
        _ => Verdict::Discard,
    }
}

/// Verdict after the confirmation run (noise-aware): the mean must still clear the bar.
pub fn confirmed(dir: Direction, best: f64, runs: &[f64], bar: f64) -> Verdict {
    let (mean, _) = mean_std(runs);
    if dir.gain(best, mean) > bar { Verdict::Keep } else { Verdict::Discard }
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_needs_strictly_better() {
        let b = bar(KeepRule::Strict, 0.1, 0.01);
        assert_eq!(first(KeepRule::Strict, Direction::Lower, 1.0, 0.999, b), Verdict::Keep);
        assert_eq!(first(KeepRule::Strict, Direction::Lower, 1.0, 1.0, b), Verdict::Discard);
        assert_eq!(first(KeepRule::Strict, Direction::Higher, 1.0, 1.1, b), Verdict::Keep);
    }

    #[test]
    fn noise_aware_uses_two_sigma_and_floor() {
        let (_, sd) = mean_std(&[1.00, 1.02]);
        let b = bar(KeepRule::NoiseAware, sd, 0.001);
        assert!((b - 2.0 * sd).abs() < 1e-12);
        assert_eq!(first(KeepRule::NoiseAware, Direction::Lower, 1.01, 0.99, b), Verdict::Discard);
        assert_eq!(first(KeepRule::NoiseAware, Direction::Lower, 1.01, 0.95, b), Verdict::Confirm);
        assert_eq!(confirmed(Direction::Lower, 1.01, &[0.95, 1.02], b), Verdict::Discard);
        assert_eq!(confirmed(Direction::Lower, 1.01, &[0.95, 0.96], b), Verdict::Keep);
        assert_eq!(bar(KeepRule::NoiseAware, 0.0, 0.001), 0.001);
    }
}
