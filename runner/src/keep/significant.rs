//! `significant` (default): a one-sided test of the candidate's gain over the best, at level
//! `significance` (5 % by default), with sigma pooled from every repeated measurement of the
//! run (the baseline's seeds, the candidates' extra runs): `t = gain / (sigma * sqrt(1/n_best
//! + 1/n_candidate))` against Student's t with the pooled degrees of freedom. The candidate
//! runs once; while the answer is open, one side runs again (the one with fewer runs, which
//! narrows the test most: the best when it has fewer runs than the candidate, else the
//! candidate), up to `max_candidate_runs` runs for the decision in all. It is kept only from
//! its second run on, when the test has a p-value below
//! `significance / (max_candidate_runs - 1)`: the looks share the level, so a change that does
//! nothing is kept with probability at most `significance` (Bonferroni over exact t-tests). A
//! first run that is unlikely to come from a gain (p > 0.3) is discarded at once, which spares
//! most null changes their second run. Simulated with a fresh 4-run baseline, about 4 % of null
//! changes are kept at the default 5 %, and a true gain of 3 sigma about 9 times in 10;
//! `tests/keep_rule.rs` measures both through the real loop. The gain must also exceed
//! `noise_floor`.

use super::stats::{mean_std, t_upper_quantile, t_upper_tail};
use super::{Judged, Last, Look, Measured, Noise, Rule, Runs, Verdict};
use crate::config::Direction;

/// A first run with a p-value above this is discarded without a second run.
pub const CONTINUE_P: f64 = 0.3;

/// The p-value a candidate needs to be kept, at any of its looks from the second run on: the
/// `max_runs - 1` looks share the level `alpha` (Bonferroni).
pub fn keep_level(alpha: f64, max_runs: u32) -> f64 {
    alpha / (max_runs.max(2) - 1) as f64
}

/// The test of a candidate against the best.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Test {
    pub gain: f64,
    pub se: f64,
    pub t: f64,
    /// One-sided: the chance of a gain at least this large from a change that does nothing.
    pub p: f64,
    /// The p-value this look needs to keep (NaN on a first run, which never keeps).
    pub needed: f64,
    pub df: f64,
}

/// Tests `candidate` runs against `best` runs with the pooled noise.
pub fn test(dir: Direction, best: &[f64], candidate: &[f64], noise: Noise, alpha: f64, max_runs: u32) -> Test {
    let (b, _) = mean_std(best);
    let (c, _) = mean_std(candidate);
    let gain = dir.gain(b, c);
    let se = noise.sigma * (1.0 / best.len().max(1) as f64 + 1.0 / candidate.len().max(1) as f64).sqrt();
    let t = if se > 0.0 { gain / se } else if gain > 0.0 { f64::INFINITY } else { f64::NEG_INFINITY };
    let p = t_upper_tail(t, noise.df.max(1.0));
    let needed = if candidate.len() >= 2 { keep_level(alpha, max_runs) } else { f64::NAN };
    Test { gain, se, t, p, needed, df: noise.df }
}

/// Which side runs again when the answer is open: the one with fewer runs, since a run there
/// shrinks the standard error `sqrt(1/n_best + 1/n_candidate)` most; the candidate on a tie.
pub fn rerun_best(best_runs: usize, candidate_runs: usize) -> bool {
    best_runs < candidate_runs
}

/// The `significant` rule's verdict on a test after `runs` runs of the decision: the
/// candidate's, and the best's that the decision asked for.
pub fn significant(test: &Test, runs: usize, max_runs: u32, floor: f64) -> Verdict {
    if test.gain <= floor {
        return Verdict::Discard;
    }
    if runs < 2 {
        return if test.p < CONTINUE_P { Verdict::Confirm } else { Verdict::Discard };
    }
    if test.p < test.needed {
        Verdict::Keep
    } else if runs as u32 >= max_runs || test.p >= CONTINUE_P {
        Verdict::Discard
    } else {
        Verdict::Confirm
    }
}

impl Test {
    /// `gain 0.0123 +- 0.0050 (t 2.46, p 0.021, needs p < 0.025, df 14)`.
    pub fn describe(&self) -> String {
        let needs = if self.needed.is_nan() { "a second run before a keep".to_string() } else { format!("needs p < {:.3}", self.needed) };
        format!("gain {:.6} +- {:.6} (t {:.2}, p {:.3}, {needs}, df {})", self.gain, self.se, self.t, self.p, self.df)
    }

    /// The gain this test would need for a p-value below `p`, and above `floor`: the bar a
    /// candidate had to clear, in the metric's units. With no noise measured it is the floor.
    pub fn gain_needed(&self, p: f64, floor: f64) -> f64 {
        if !(self.se > 0.0) || p.is_nan() {
            return floor;
        }
        (self.se * t_upper_quantile(p, self.df.max(1.0))).max(floor)
    }

    /// The bar of this look: a later look's keep bar, or, for a first run (which never keeps),
    /// the gain that earns it a second run.
    pub fn bar(&self, floor: f64) -> f64 {
        self.gain_needed(if self.needed.is_nan() { CONTINUE_P } else { self.needed }, floor)
    }
}

pub struct Significant {
    pub direction: Direction,
    /// The smallest gain that counts.
    pub floor: f64,
    /// The chance, over all the looks at a candidate, of keeping a change that does nothing.
    pub significance: f64,
    /// The most runs of one decision (of the candidate and of the best).
    pub max_runs: u32,
    /// The config's `baseline_runs` (at least two are run).
    pub baseline_runs: u32,
}

impl Significant {
    /// The p-value a candidate needs to be kept (see [`keep_level`]).
    pub fn keep_level(&self) -> f64 {
        keep_level(self.significance, self.max_runs)
    }
}

impl Rule for Significant {
    fn describe(&self) -> String {
        format!(
            "significant (one-sided t-test at {}, sigma pooled over every repeated run, {} baseline runs, up to {} runs a candidate, gain > {})",
            self.significance, self.baseline_runs, self.max_runs, self.floor
        )
    }

    fn baseline_runs(&self) -> u64 {
        self.baseline_runs.max(2) as u64
    }

    /// The floor: the test decides.
    fn bar(&self, _sigma: f64) -> f64 {
        self.floor
    }

    fn baseline_note(&self, _sigma: f64, n: Noise) -> String {
        format!("pooled sigma {:.6} over {} runs, df {}; keep at p < {:.4}", n.sigma, n.runs, n.df, self.keep_level())
    }

    fn runs(&self) -> Runs {
        Runs::Tested
    }

    /// The test of the candidate's runs against the best's; while open, the side with fewer
    /// runs runs again.
    fn look(&self, look: &Look<'_>) -> Judged {
        let t = test(self.direction, look.best_runs, look.candidate, look.noise, self.significance, self.max_runs);
        let verdict = match significant(&t, look.runs, self.max_runs, self.floor) {
            Verdict::Confirm if rerun_best(look.best_runs.len(), look.candidate.len()) => Verdict::ConfirmBest,
            v => v,
        };
        Judged { verdict, why: t.describe(), bar: t.bar(self.floor) }
    }

    /// Kept when the gain is above the floor and the test (with the pooled `noise`) has a
    /// p-value below the keep level, from `min_runs` runs on.
    fn last(&self, best: Measured<'_>, candidate: Measured<'_>, _bar: f64, noise: Noise, min_runs: usize) -> Last {
        let gain = self.direction.gain(best.value, candidate.value);
        let t = test(self.direction, best.runs, candidate.runs, noise, self.significance, self.max_runs);
        let level = self.keep_level();
        Last { keep: t.gain > self.floor && candidate.runs.len() >= min_runs && t.p < level, gain, bar: t.gain_needed(level, self.floor) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_is_the_gain_with_the_needed_p_value() {
        for (t, df) in [(12.706, 1.0), (2.228, 10.0), (1.960, 1e6)] {
            assert!((t_upper_quantile(0.025, df) - t).abs() < 2e-3, "df {df}: {}", t_upper_quantile(0.025, df));
        }
        let noise = Noise { sigma: 0.01, df: 10.0, runs: 12, groups: 4 };
        let best = [2.0, 2.0];
        // Two candidate runs: a gain just over the bar keeps, one just under does not.
        let probe = test(Direction::Lower, &best, &[1.99, 1.99], noise, 0.05, 3);
        let bar = probe.bar(0.0);
        assert!((bar - 0.01 * 2.228).abs() < 1e-4, "{bar}");
        for (gain, verdict) in [(bar + 1e-6, Verdict::Keep), (bar - 1e-6, Verdict::Confirm)] {
            let t = test(Direction::Lower, &best, &[2.0 - gain, 2.0 - gain], noise, 0.05, 3);
            assert_eq!(significant(&t, 2, 3, 0.0), verdict, "gain {gain} against bar {bar}");
        }
        assert_eq!(probe.bar(0.5), 0.5, "the floor when it is higher");
        assert_eq!(test(Direction::Lower, &best, &[1.9], Noise::default(), 0.05, 3).bar(0.001), 0.001);
    }

    #[test]
    fn significant_asks_for_a_second_run_and_keeps_only_a_clear_gain() {
        let noise = Noise { sigma: 0.01, df: 30.0, runs: 32, groups: 16 };
        let best = [2.0, 2.0, 2.0];
        let dir = Direction::Lower;
        // One run 3 sigma better: not kept yet, run again.
        let t = test(dir, &best, &[1.97], noise, 0.05, 3);
        assert_eq!(significant(&t, 1, 3, 0.0), Verdict::Confirm);
        // One run no better: discarded at once.
        let t = test(dir, &best, &[2.001], noise, 0.05, 3);
        assert_eq!(significant(&t, 1, 3, 0.0), Verdict::Discard);
        // Two runs 3 sigma better: kept.
        let t = test(dir, &best, &[1.97, 1.972], noise, 0.05, 3);
        assert!(t.p < t.needed && (t.needed - 0.025).abs() < 1e-12, "{t:?}");
        assert_eq!(significant(&t, 2, 3, 0.0), Verdict::Keep);
        // Two runs, open: a third; three runs, still open: discarded.
        let t = test(dir, &best, &[1.993, 1.995], noise, 0.05, 3);
        assert_eq!(significant(&t, 2, 3, 0.0), Verdict::Confirm, "{t:?}");
        let t = test(dir, &best, &[1.993, 1.995, 1.999], noise, 0.05, 3);
        assert_eq!(significant(&t, 3, 3, 0.0), Verdict::Discard, "{t:?}");
        // A gain under the floor is never kept, whatever the noise.
        let t = test(dir, &best, &[1.9999, 1.9999], Noise::default(), 0.05, 3);
        assert_eq!(significant(&t, 2, 3, 0.001), Verdict::Discard);
        let t = test(dir, &best, &[1.99, 1.99], Noise::default(), 0.05, 3);
        assert_eq!(significant(&t, 2, 3, 0.001), Verdict::Keep, "deterministic runs: the floor decides");
        assert!(t.describe().contains("needs p < 0.025"), "{}", t.describe());
    }

    #[test]
    fn the_side_with_fewer_runs_runs_again() {
        assert!(rerun_best(2, 3), "a best of 2 runs against a candidate of 3: the best");
        assert!(!rerun_best(2, 2), "a tie: the candidate");
        assert!(!rerun_best(4, 1));
        // The best's extra run counts toward the decision's cap like the candidate's.
        let noise = Noise { sigma: 0.01, df: 30.0, runs: 32, groups: 16 };
        let t = test(Direction::Lower, &[2.0, 2.0], &[1.993, 1.995, 1.994], noise, 0.05, 4);
        assert_eq!(significant(&t, 3, 4, 0.0), Verdict::Confirm, "{t:?}");
        assert_eq!(significant(&t, 4, 4, 0.0), Verdict::Discard, "{t:?}");
    }

    #[test]
    fn the_last_look_is_the_rules_verdict_on_every_run_there_is() {
        let noise = Noise { sigma: 0.01, df: 12.0, runs: 16, groups: 4 };
        let rule = Significant { direction: Direction::Lower, floor: 0.001, significance: 0.05, max_runs: 3, baseline_runs: 4 };
        assert!((rule.keep_level() - 0.025).abs() < 1e-12);
        let best = [2.0, 2.003, 1.998, 2.001];
        let of = |runs: &[f64]| mean_std(runs).0;
        for runs in [&[1.97, 1.972][..], &[1.993, 1.995], &[1.993, 1.995, 1.999], &[2.01, 2.02], &[1.9995, 1.9995], &[1.97]] {
            let t = test(rule.direction, &best, runs, noise, rule.significance, rule.max_runs);
            let last = rule.last(Measured { value: of(&best), runs: &best }, Measured { value: of(runs), runs }, 0.0, noise, 2);
            assert_eq!(last.keep, significant(&t, runs.len(), rule.max_runs, rule.floor) == Verdict::Keep, "{runs:?}: {t:?}");
            assert!((last.gain - t.gain).abs() < 1e-12 && (last.bar - t.gain_needed(0.025, rule.floor)).abs() < 1e-12, "{last:?}");
        }
        // One recorded run, one look: kept when it alone is clear at the keep level.
        let one = |m: f64| rule.last(Measured { value: 2.0, runs: &[2.0] }, Measured { value: m, runs: &[m] }, 0.0, noise, 1);
        assert!(one(1.95).keep && !one(1.99).keep, "{:?} {:?}", one(1.95), one(1.99));
    }
}
