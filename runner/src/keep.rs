//! Keep rules: when does a candidate replace the best?
//!
//! - `strict`: the reference rule. One run; keep when the metric is strictly better.
//! - `significant` (default): a one-sided test of the candidate's gain over the best, at level
//!   `significance` (5 % by default), with sigma pooled from every repeated measurement of the
//!   run (the baseline's seeds, the candidates' extra runs): `t = gain / (sigma * sqrt(1/n_best
//!   + 1/n_candidate))` against Student's t with the pooled degrees of freedom. The candidate
//!   runs once; while the answer is open, one side runs again (the one with fewer runs, which
//!   narrows the test most: the best when it has fewer runs than the candidate, else the
//!   candidate), up to `max_candidate_runs` runs for the decision in all. It is kept only from
//!   its second run on, when the test has a p-value below
//!   `significance / (max_candidate_runs - 1)`: the looks share the level, so a change that does
//!   nothing is kept with probability at most `significance` (Bonferroni over exact t-tests). A
//!   first run that is unlikely to come from a gain (p > 0.3) is discarded at once, which spares
//!   most null changes their second run. Simulated with a fresh 4-run baseline, about 4 % of null
//!   changes are kept at the default 5 %, and a true gain of 3 sigma about 9 times in 10;
//!   `tests/keep_rule.rs` measures both through the real loop. The gain must also exceed
//!   `noise_floor`.
//! - `noise-aware`: the earlier default: the baseline runs K times; sigma is the sample
//!   standard deviation of those runs and the bar is max(2 sigma, noise_floor). A candidate
//!   whose first run gains more than the bar is re-run once with seed+1; it is kept when the
//!   mean of its two runs still gains more than the bar. With two baseline runs it keeps about
//!   one null change in eight.
//!
//! The best's value is the mean of its runs.

use crate::config::{Direction, KeepRule, ResearchConfig};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Keep,
    Discard,
    /// Beats the bar once: run again with another seed before keeping.
    Confirm,
}

/// The gain a candidate must exceed (for `significant`: the floor; the test decides).
pub fn bar(rule: KeepRule, sigma: f64, floor: f64) -> f64 {
    match rule {
        KeepRule::Strict => 0.0,
        KeepRule::NoiseAware => (2.0 * sigma).max(floor),
        KeepRule::Significant => floor,
    }
}

/// A first run with a p-value above this is discarded without a second run.
pub const CONTINUE_P: f64 = 0.3;

/// The noise of a run, pooled from every group of repeated measurements of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Noise {
    pub sigma: f64,
    /// Degrees of freedom: the sum over groups of (runs - 1).
    pub df: f64,
    /// Runs in the groups that have at least two.
    pub runs: usize,
    pub groups: usize,
}

/// Pools the groups' variances: `sum (x - group mean)^2 / sum (n - 1)`.
pub fn pooled(groups: &[Vec<f64>]) -> Noise {
    let (mut ss, mut df, mut runs, mut n_groups) = (0.0, 0.0, 0, 0);
    for g in groups.iter().filter(|g| g.len() >= 2) {
        let (mean, _) = mean_std(g);
        ss += g.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
        df += (g.len() - 1) as f64;
        runs += g.len();
        n_groups += 1;
    }
    Noise { sigma: if df > 0.0 { (ss / df).sqrt() } else { 0.0 }, df, runs, groups: n_groups }
}

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

/// The t with P(T > t) = p for Student's t with `df` degrees of freedom (bisection on the
/// tail, which falls as t grows).
pub fn t_upper_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (-1e4, 1e4);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_upper_tail(mid, df) > p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// P(T > t) for Student's t with `df` degrees of freedom.
pub fn t_upper_tail(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { tail } else { 1.0 - tail }
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..300 {
        let m = m as f64;
        for numerator in [m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)), -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))] {
            d = 1.0 + numerator * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + numerator / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-14 {
            break;
        }
    }
    front * f / a
}

/// ln Gamma (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
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

/// A keep rule with the settings the research config gives it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub kind: KeepRule,
    pub direction: Direction,
    /// The smallest gain that counts.
    pub floor: f64,
    /// `significant`: the chance, over all the looks at a candidate, of keeping a change that
    /// does nothing.
    pub significance: f64,
    /// `significant`: the most runs of one decision (of the candidate and of the best).
    pub max_runs: u32,
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

impl Rule {
    pub fn of(cfg: &ResearchConfig) -> Rule {
        Rule { kind: cfg.keep_rule, direction: cfg.direction, floor: cfg.noise_floor, significance: cfg.significance, max_runs: cfg.max_candidate_runs }
    }

    /// The p-value a candidate needs to be kept (see [`keep_level`]).
    pub fn keep_level(&self) -> f64 {
        keep_level(self.significance, self.max_runs)
    }

    /// The rule's word on a candidate whose runs are all in, against the best: strict keeps
    /// any gain, noise-aware a gain above `bar`, significant a gain above the floor whose test
    /// (with the pooled `noise`) has a p-value below the keep level, from `min_runs` runs
    /// on. The loop asks it when a result arrives after another keep moved the best (its
    /// candidates need two runs), and for a result recorded by hand (one run: a confirmation
    /// would need another run by hand, so one look decides).
    pub fn last(&self, best: Measured<'_>, candidate: Measured<'_>, bar: f64, noise: Noise, min_runs: usize) -> Last {
        let gain = self.direction.gain(best.value, candidate.value);
        match self.kind {
            KeepRule::Strict => Last { keep: gain > 0.0, gain, bar: 0.0 },
            KeepRule::NoiseAware => Last { keep: gain > bar, gain, bar },
            KeepRule::Significant => {
                let t = test(self.direction, best.runs, candidate.runs, noise, self.significance, self.max_runs);
                let level = self.keep_level();
                Last { keep: t.gain > self.floor && candidate.runs.len() >= min_runs && t.p < level, gain, bar: t.gain_needed(level, self.floor) }
            }
        }
    }
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
    fn student_t_tails_match_the_tables() {
        // t_{0.975} for df 1, 2, 10 and the normal limit.
        for (t, df) in [(12.706, 1.0), (4.303, 2.0), (2.228, 10.0), (1.960, 1e6)] {
            assert!((t_upper_tail(t, df) - 0.025).abs() < 2e-4, "df {df}: {}", t_upper_tail(t, df));
        }
        assert!((t_upper_tail(0.0, 5.0) - 0.5).abs() < 1e-12);
        assert!((t_upper_tail(-2.228, 10.0) - 0.975).abs() < 2e-4);
        assert_eq!(t_upper_tail(f64::INFINITY, 3.0), 0.0);
    }

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
    fn noise_is_pooled_over_groups_of_repeated_runs() {
        let n = pooled(&[vec![1.0, 1.2], vec![2.0], vec![3.0, 3.1, 2.9]]);
        assert_eq!((n.df, n.runs, n.groups), (3.0, 5, 2));
        // SS = 0.02 + 0.02 = 0.04 over 3 df.
        assert!((n.sigma - (0.04f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(pooled(&[vec![1.0]]).df, 0.0);
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

    /// The last look agrees with the `significant` verdict of a candidate's second and later
    /// runs, and lets one recorded run decide at the same level; strict and noise-aware compare
    /// the values.
    #[test]
    fn the_last_look_is_the_rules_verdict_on_every_run_there_is() {
        let noise = Noise { sigma: 0.01, df: 12.0, runs: 16, groups: 4 };
        let rule = Rule { kind: KeepRule::Significant, direction: Direction::Lower, floor: 0.001, significance: 0.05, max_runs: 3 };
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
        let strict = Rule { kind: KeepRule::Strict, ..rule };
        assert_eq!(strict.last(Measured { value: 2.0, runs: &[] }, Measured { value: 1.9999, runs: &[] }, 0.5, noise, 2), Last { keep: true, gain: 2.0 - 1.9999, bar: 0.0 });
        let aware = Rule { kind: KeepRule::NoiseAware, ..rule };
        assert!(!aware.last(Measured { value: 2.0, runs: &[] }, Measured { value: 1.99, runs: &[] }, 0.02, noise, 2).keep);
        assert!(aware.last(Measured { value: 2.0, runs: &[] }, Measured { value: 1.97, runs: &[] }, 0.02, noise, 2).keep);
    }
}
