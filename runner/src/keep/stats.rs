//! The statistics the keep rules share: mean and standard deviation, the noise pooled over
//! repeated runs, and Student's t (its tail and quantile, through the regularized incomplete
//! beta function; written here rather than pulling a statistics crate for two functions).

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
    fn noise_is_pooled_over_groups_of_repeated_runs() {
        let n = pooled(&[vec![1.0, 1.2], vec![2.0], vec![3.0, 3.1, 2.9]]);
        assert_eq!((n.df, n.runs, n.groups), (3.0, 5, 2));
        // SS = 0.02 + 0.02 = 0.04 over 3 df.
        assert!((n.sigma - (0.04f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(pooled(&[vec![1.0]]).df, 0.0);
    }
}
