//! Row kernels, compiled for AVX-512 and AVX2 and picked at run time (a plain build targets
//! x86-64 v1, where the compiler would only use SSE2). Lanes are accumulated separately so the
//! loops vectorise without fast-math.

use experiment::fastmath::{LANES, exp};

/// `cap * tanh(z / cap)`.
#[inline(always)]
fn softcap(z: f32, cap: f32) -> f32 {
    // tanh(y) = 1 - 2 / (e^{2y} + 1): absolute error ~1e-7, enough for logits.
    cap - 2.0 * cap / (exp(2.0 * z / cap) + 1.0)
}

/// Overwrites `row` with its capped logits and returns their log-sum-exp. The capped values
/// lie in [-cap, cap], so `e^(c - cap)` neither overflows nor underflows: no max pass.
#[inline(always)]
fn lse_row_generic(row: &mut [f32], cap: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            let c = softcap(*x, cap);
            *x = c;
            *a += exp(c - cap);
        }
    }
    let mut sum: f32 = 0.0;
    for x in chunks.into_remainder() {
        let c = softcap(*x, cap);
        *x = c;
        sum += exp(c - cap);
    }
    cap + (acc.iter().sum::<f32>() + sum).ln()
}

/// Overwrites the capped logits `row` with `d loss / d z` for that row.
#[inline(always)]
fn backward_row_generic(row: &mut [f32], lse: f32, target: usize, cap: f32, scale: f32) {
    let inv_cap2 = 1.0 / (cap * cap);
    let at_target = row[target];
    for x in row.iter_mut() {
        let c = *x;
        *x = exp(c - lse) * (1.0 - c * c * inv_cap2) * scale;
    }
    row[target] -= (1.0 - at_target * at_target * inv_cap2) * scale;
}

/// `row = softmax(row)`.
#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            *x = exp(*x - max);
            *a += *x;
        }
    }
    let mut sum: f32 = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / (acc.iter().sum::<f32>() + sum);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// `y = x * r` row by row (rows of `d`), `r = 1 / sqrt(mean(x^2) + eps)` kept per row.
#[inline(always)]
fn rms_norm_rows_generic(x: &[f32], y: &mut [f32], r: &mut [f32], d: usize) {
    for ((x, y), r) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(r.iter_mut()) {
        let inv = 1.0 / (sum_of_products(x, x) / d as f32 + f32::EPSILON).sqrt();
        *r = inv;
        y.iter_mut().zip(x).for_each(|(y, x)| *y = x * inv);
    }
}

/// `dx = r dy - x r^3 mean(dy * x)`, row by row: the RMSNorm backward.
#[inline(always)]
fn rms_norm_backward_rows_generic(x: &[f32], dy: &[f32], r: &[f32], dx: &mut [f32], d: usize) {
    for (((x, dy), &r), dx) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(r).zip(dx.chunks_exact_mut(d)) {
        let k = r * r * r * sum_of_products(dy, x) / d as f32;
        for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
            *dx = r * dy - k * x;
        }
    }
}

/// `sum(a * b)` with separate lane accumulators, so it vectorises without fast-math.
#[inline(always)]
fn sum_of_products(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows `row0..` of `[.., T, D]` (`t` = T): `y = rotary(x) * r`, `r` kept per row, with the
/// half-split rotation `(x1 c + x2 s, x2 c - x1 s)` at the row's position.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rotary_rms_rows_generic(x: &[f32], y: &mut [f32], r: &mut [f32], cos: &[f32], sin: &[f32], d: usize, t: usize, row0: usize) {
    let half = d / 2;
    for (i, ((x, y), r)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(r.iter_mut()).enumerate() {
        let pos = (row0 + i) % t;
        let (c, s) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        let (x1, x2) = x.split_at(half);
        let (y1, y2) = y.split_at_mut(half);
        for j in 0..half {
            y1[j] = x1[j] * c[j] + x2[j] * s[j];
            y2[j] = x2[j] * c[j] - x1[j] * s[j];
        }
        let inv = 1.0 / (sum_of_products(y, y) / d as f32 + f32::EPSILON).sqrt();
        *r = inv;
        y.iter_mut().for_each(|v| *v *= inv);
    }
}

/// The backward of [`rotary_rms_rows_generic`]: RMSNorm's `r dout - y r^3 mean(dout y)` on
/// the recomputed rotation `y`, then the inverse rotation.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rotary_rms_backward_rows_generic(x: &[f32], dout: &[f32], r: &[f32], cos: &[f32], sin: &[f32], dx: &mut [f32], d: usize, t: usize, row0: usize) {
    let half = d / 2;
    for (i, (((x, dout), &r), dx)) in x.chunks_exact(d).zip(dout.chunks_exact(d)).zip(r).zip(dx.chunks_exact_mut(d)).enumerate() {
        let pos = (row0 + i) % t;
        let (c, s) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        let (x1, x2) = x.split_at(half);
        {
            let (y1, y2) = dx.split_at_mut(half);
            for j in 0..half {
                y1[j] = x1[j] * c[j] + x2[j] * s[j];
                y2[j] = x2[j] * c[j] - x1[j] * s[j];
            }
        }
        let k = r * r * r * sum_of_products(dout, dx) / d as f32;
        for (g, &o) in dx.iter_mut().zip(dout) {
            *g = r * o - k * *g;
        }
        let (g1, g2) = dx.split_at_mut(half);
        for j in 0..half {
            let (a, b) = (g1[j], g2[j]);
            g1[j] = a * c[j] - b * s[j];
            g2[j] = a * s[j] + b * c[j];
        }
    }
}

#[inline(always)]
fn relu_squared_generic(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| {
        let r = x.max(0.0);
        *y = r * r;
    });
}

#[inline(always)]
fn relu_squared_backward_generic(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.iter_mut().zip(x).zip(dy).for_each(|((dx, &x), &dy)| *dx = 2.0 * x.max(0.0) * dy);
}

#[inline(always)]
fn softcap_in_place_generic(z: &mut [f32], cap: f32) {
    z.iter_mut().for_each(|z| *z = softcap(*z, cap));
}

/// One query row over `n` keys: `out = softmax(scale * q . k_j) . v_j`, key and value `j` at
/// `j * stride` in `keys` and `values` (rows of `d`); `scores` holds `n` values of scratch.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row_generic(q: &[f32], keys: &[f32], values: &[f32], stride: usize, n: usize, d: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    for (j, s) in scores[..n].iter_mut().enumerate() {
        *s = scale * sum_of_products(q, &keys[j * stride..j * stride + d]);
    }
    softmax_generic(&mut scores[..n]);
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, &p) in scores[..n].iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[j * stride..j * stride + d]) {
            *o += p * v;
        }
    }
}

experiment::multiversion!(attend_row, attend_row_generic, (q: &[f32], keys: &[f32], values: &[f32], stride: usize, n: usize, d: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) -> ());
experiment::multiversion!(rms_norm_rows, rms_norm_rows_generic, (x: &[f32], y: &mut [f32], r: &mut [f32], d: usize) -> ());
experiment::multiversion!(rms_norm_backward_rows, rms_norm_backward_rows_generic, (x: &[f32], dy: &[f32], r: &[f32], dx: &mut [f32], d: usize) -> ());
experiment::multiversion!(softcap_in_place, softcap_in_place_generic, (z: &mut [f32], cap: f32) -> ());
experiment::multiversion!(relu_squared, relu_squared_generic, (x: &[f32], y: &mut [f32]) -> ());
experiment::multiversion!(rotary_rms_rows, rotary_rms_rows_generic, (x: &[f32], y: &mut [f32], r: &mut [f32], cos: &[f32], sin: &[f32], d: usize, t: usize, row0: usize) -> ());
experiment::multiversion!(rotary_rms_backward_rows, rotary_rms_backward_rows_generic, (x: &[f32], dout: &[f32], r: &[f32], cos: &[f32], sin: &[f32], dx: &mut [f32], d: usize, t: usize, row0: usize) -> ());
experiment::multiversion!(relu_squared_backward, relu_squared_backward_generic, (x: &[f32], dy: &[f32], dx: &mut [f32]) -> ());
experiment::multiversion!(softmax_in_place, softmax_generic, (row: &mut [f32]) -> ());
experiment::multiversion!(softcap_lse_row, lse_row_generic, (row: &mut [f32], cap: f32) -> f32);
experiment::multiversion!(softcap_ce_backward_row, backward_row_generic, (row: &mut [f32], lse: f32, target: usize, cap: f32, scale: f32) -> ());

#[cfg(test)]
mod tests {
    #[test]
    fn softcap_matches_tanh() {
        for i in -4000..4000 {
            let z = i as f32 / 40.0;
            let want = 15.0 * (z / 15.0).tanh();
            assert!((super::softcap(z, 15.0) - want).abs() < 4e-6, "z {z}");
        }
    }
}
