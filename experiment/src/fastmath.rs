//! Vectorisable `f32` math for CPU tensors: the Cephes `exp`, a row log-sum-exp, and the
//! `multiversion!` macro that compiles a kernel for AVX-512 and AVX2 and picks one at run time.
//!
//! Why: a plain build targets x86-64 v1 (SSE2), and Burn's CPU backends run `exp` as scalar libm
//! on one core. Evaluation's log-softmax over `[rows, 8192]` logits was then most of a short CPU
//! run's overhead. The trainer's fused kernels use the same `exp`.

/// `e^x` to about 1 ulp for `x` in [-87, 88] (Cephes `expf`; clamped outside), written so that
/// a loop over it vectorises.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) by the 1.5 * 2^23 trick, r = x - n ln 2 in two parts.
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    // 2^n from the integer n held in t's low mantissa bits (no float->int cast, which would
    // not vectorise).
    e * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23)
}

/// Lanes accumulated separately, so that sums vectorise without fast-math.
pub const LANES: usize = 16;

/// Defines `pub fn $name(args) -> ret` that runs `$generic` (an `#[inline(always)]` function)
/// compiled for AVX-512 or AVX2+FMA when the CPU has them, else as built.
#[macro_export]
macro_rules! multiversion {
    ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { $generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { $generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// `ln(sum(e^x))` of a row, shifted by its maximum (no overflow); NaN if the row holds NaN,
/// +inf if it holds +inf.
#[inline(always)]
fn log_sum_exp_generic(row: &[f32]) -> f32 {
    let mut max = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut tail_max = f32::NEG_INFINITY;
    for &x in chunks.remainder() {
        tail_max = tail_max.max(x);
    }
    for chunk in chunks {
        for (m, &x) in max.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    let m = max.iter().fold(tail_max, |a, &b| a.max(b));
    if !m.is_finite() || row.iter().any(|x| x.is_nan()) {
        // -inf (empty or all -inf), +inf or NaN: the exact expression says what it is.
        return row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln() as f32;
    }
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| exp(x - m)).sum();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += exp(x - m);
        }
    }
    m + ((acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64).ln() as f32)
}

multiversion!(log_sum_exp, log_sum_exp_generic, (row: &[f32]) -> f32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f32;
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            worst = worst.max(((exp(x) - x.exp()) / x.exp()).abs());
        }
        assert!(worst < 1e-6, "max relative error {worst}");
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        for len in [1, 15, 16, 17, 1000, 8192] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 7919 % 1009) as f32 - 500.0) / 17.0).collect();
            let want = {
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
            };
            let got = log_sum_exp(&row) as f64;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "len {len}: {got} vs {want}");
        }
    }

    #[test]
    fn log_sum_exp_keeps_non_finite_inputs_visible() {
        assert!(log_sum_exp(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(log_sum_exp(&[1.0, f32::INFINITY]), f32::INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
        // Large values do not overflow: the row is shifted by its maximum.
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }
}
