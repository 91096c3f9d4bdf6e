//! Hand-written CPU kernels for the `flex` backend, with their own backward passes.
//!
//! Why this file exists: on flex, the soft-capped cross-entropy over 8192-wide logits was the
//! largest cost of a training step after the matmuls. Written with tensor ops it is ~15 passes
//! over a `[B*T, V]` tensor (div, tanh, mul, max, sub, exp, sum, log, gather and their
//! backwards), each allocating a fresh 67 MB buffer at the CPU benchmark size, with Burn's scalar
//! `tanh`/`exp` on one core. [`softcap_cross_entropy`] does the same math in two row-parallel,
//! SIMD passes (one forward, one backward), reusing the logits buffer in place.
//!
//! [`causal_attention`] is the same kind of replacement for Burn's attention, which under
//! autodiff always runs its unfused fallback (scores, mask, softmax and their backwards as ~12
//! separate tensor ops over `[B, H, T, T]`): one pass per head for the forward, keeping the
//! probabilities, and one for the backward, each a few `gemm` calls, heads in parallel.
//!
//! The math is unchanged: `loss = mean_i( logsumexp(c_i) - c_i[t_i] )` with
//! `c = cap * tanh(z / cap)`, and `dloss/dz = (softmax(c) - onehot(t)) * (1 - (c/cap)^2) / N`.
//! Every other backend (and flex without autodiff) runs the plain tensor formulation in
//! [`crate::model::softcap_cross_entropy_reference`]; `tests` check the two agree.

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::model::softcap_cross_entropy_reference;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels off (every backend then runs the tensor formulation) or back on;
/// for benchmarks that compare the two.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Keeps freed memory in the process instead of handing it back to the OS after every tensor.
///
/// A training step allocates and frees hundreds of MB of fresh tensors (flex and ndarray
/// allocate every op's output); with glibc's defaults the large ones are mmap'ed and unmapped
/// each time and the heap top is trimmed, so every step page-faults its memory in again (17% of
/// a flex step in the kernel at d256). This serves allocations up to 32 MB from the heap and
/// keeps up to 1 GB of free heap. Process-wide; a no-op off glibc Linux.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 128 << 20);
    }
}

/// Mean cross-entropy (nats) of the soft-capped logits `cap * tanh(z / cap)`, where `z` is
/// `[N, V]` (raw LM-head outputs) and `targets` `[N]`. Returns `[1]`.
pub fn softcap_cross_entropy(z: Tensor<2>, targets: Tensor<1, Int>, cap: f64) -> Tensor<1> {
    #[cfg(feature = "flex")]
    if ENABLED.load(Ordering::Relaxed) {
        let z = match flex::try_fused(z, &targets, cap) {
            Ok(loss) => return loss,
            Err(z) => z,
        };
        return softcap_cross_entropy_reference(z, targets, cap);
    }
    softcap_cross_entropy_reference(z, targets, cap)
}

/// Causal softmax attention `softmax(scale * q k^T + mask) v` of `q`, `k`, `v` `[B, H, T, D]`,
/// where query i sees keys `i - window ..= i` (all keys up to i when `window` is `None`).
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if ENABLED.load(Ordering::Relaxed) {
        match flex::try_attention(q, k, v, scale, window) {
            Ok(y) => return y,
            Err((q, k, v)) => return causal_attention_reference(q, k, v, scale, window),
        }
    }
    causal_attention_reference(q, k, v, scale, window)
}

/// [`causal_attention`] through Burn's attention op, with a window mask when `window` is set.
pub fn causal_attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<4> {
    let [b, h, t, _] = q.dims();
    let mask = window.filter(|&w| w < t).map(|w| crate::model::window_mask(b, h, t, w, &q.device()));
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: true };
    attention(q, k, v, mask, None, options)
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::*;
    use burn::tensor::{Bytes, DType};
    use rayon::prelude::*;

    use super::simd;

    /// Runs the fused op when `z` is a flex tensor under autodiff; hands `z` back otherwise.
    pub fn try_fused(z: Tensor<2>, targets: &Tensor<1, Int>, cap: f64) -> Result<Tensor<1>, Tensor<2>> {
        if !matches!(z.device().gradient_checkpointing_strategy(), Some(_)) {
            return Err(z);
        }
        if let Ok(p) = z.clone().try_into_primitive::<Autodiff<Flex, NoCheckpointing>>() {
            return Ok(Tensor::from_primitive::<Autodiff<Flex, NoCheckpointing>>(fused::<NoCheckpointing>(p, targets, cap)));
        }
        if let Ok(p) = z.clone().try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>() {
            return Ok(Tensor::from_primitive::<Autodiff<Flex, BalancedCheckpointing>>(fused::<BalancedCheckpointing>(p, targets, cap)));
        }
        Err(z)
    }

    type AdTensor<C> = burn::backend::tensor::FloatTensor<Autodiff<Flex, C>>;

    /// Saved for the backward pass: the capped logits (in the logits' own buffer), each row's
    /// log-sum-exp, the targets and the cap.
    #[derive(Debug, Clone)]
    struct State {
        capped: FlexTensor,
        lse: std::sync::Arc<Vec<f32>>,
        targets: std::sync::Arc<Vec<usize>>,
        cap: f32,
    }

    #[derive(Debug)]
    struct SoftcapCrossEntropy;

    impl Backward<Flex, 1> for SoftcapCrossEntropy {
        type State = State;

        fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [parent] = ops.parents;
            let grad_out = grads.consume::<Flex>(&ops.node);
            let Some(parent) = parent else { return };
            let State { mut capped, lse, targets, cap } = ops.state;
            let upstream = grad_out.storage::<f32>()[grad_out.layout().start_offset()];
            let shape = capped.layout().shape().clone();
            let v = shape[1];
            let scale = upstream / targets.len() as f32;
            // Reuse the saved buffer when nothing else holds it.
            let mut grad = match capped.try_storage_mut::<f32>() {
                Some(_) => capped,
                None => FlexTensor::new(Bytes::from_elems(capped.storage::<f32>().to_vec()), Layout::contiguous(shape.clone()), DType::F32),
            };
            let data = grad.storage_mut::<f32>();
            data.par_chunks_mut(v).zip(lse.par_iter()).zip(targets.par_iter()).for_each(|((row, &lse), &t)| {
                simd::softcap_ce_backward_row(row, lse, t, cap, scale);
            });
            grads.register::<Flex>(parent.id, grad);
        }
    }

    fn fused<C: CheckpointStrategy>(z: AdTensor<C>, targets: &Tensor<1, Int>, cap: f64) -> AdTensor<C> {
        let cap = cap as f32;
        let targets: Vec<usize> = targets.to_data().convert::<i64>().try_into_vec::<i64>().expect("int targets").into_iter().map(|t| t as usize).collect();
        let prep = SoftcapCrossEntropy.prepare::<C>([z.node()]).compute_bound().stateful();
        let z = z.into_primitive();
        let shape = z.layout().shape().clone();
        let (n, v) = (shape[0], shape[1]);
        assert_eq!(targets.len(), n, "one target per row");
        assert!(targets.iter().all(|&t| t < v), "target id out of range");
        // Contiguous and uniquely owned: overwrite z with the capped logits.
        let mut capped = if z.is_contiguous() && z.layout().start_offset() == 0 && z.is_unique() {
            z
        } else {
            let owned = z.as_slice::<f32>().map(|s| s.to_vec()).unwrap_or_else(|| z.clone().into_data().try_into_vec::<f32>().expect("f32 logits"));
            FlexTensor::new(Bytes::from_elems(owned), Layout::contiguous(shape.clone()), DType::F32)
        };
        let mut lse = vec![0f32; n];
        let mut row_loss = vec![0f32; n];
        capped
            .storage_mut::<f32>()
            .par_chunks_mut(v)
            .zip(lse.par_iter_mut())
            .zip(row_loss.par_iter_mut())
            .zip(targets.par_iter())
            .for_each(|(((row, lse), loss), &t)| {
                *lse = simd::softcap_lse_row(row, cap);
                *loss = *lse - row[t];
            });
        let loss = (row_loss.iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32;
        let output = FlexTensor::new(Bytes::from_elems(vec![loss]), Layout::contiguous(burn::tensor::Shape::new([1])), DType::F32);
        match prep {
            OpsKind::Tracked(prep) => {
                prep.finish(State { capped, lse: std::sync::Arc::new(lse), targets: std::sync::Arc::new(targets), cap }, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    /// Runs the fused attention when the inputs are flex tensors under autodiff.
    #[allow(clippy::type_complexity)]
    pub fn try_attention(
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        scale: f64,
        window: Option<usize>,
    ) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)> {
        if q.device().gradient_checkpointing_strategy().is_none() {
            return Err((q, k, v));
        }
        macro_rules! with_strategy {
            ($c:ty) => {
                if let (Ok(pq), Ok(pk), Ok(pv)) = (
                    q.clone().try_into_primitive::<Autodiff<Flex, $c>>(),
                    k.clone().try_into_primitive::<Autodiff<Flex, $c>>(),
                    v.clone().try_into_primitive::<Autodiff<Flex, $c>>(),
                ) {
                    return Ok(Tensor::from_primitive::<Autodiff<Flex, $c>>(attention_fused::<$c>(pq, pk, pv, scale as f32, window)));
                }
            };
        }
        with_strategy!(NoCheckpointing);
        with_strategy!(BalancedCheckpointing);
        Err((q, k, v))
    }

    fn contiguous(t: FlexTensor) -> FlexTensor {
        if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() }
    }

    fn from_vec(data: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
        FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), DType::F32)
    }

    /// `dst[m, n] = alpha * a[m, k] b[k, n]` (`+=` with `accumulate`); `dst` has row stride
    /// `dst_rs`, the operands are given with their (row, column) strides.
    #[allow(clippy::too_many_arguments)]
    fn mm(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, alpha: f32) {
        let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
        assert!(last(dst_rs, 1, m, n) < dst.len() && last(a_rs, a_cs, m, k) < a.len() && last(b_rs, b_cs, k, n) < b.len());
        let i = |x: usize| x as isize;
        // SAFETY: the assert keeps every index the strides reach inside the slices.
        unsafe {
            gemm::gemm(
                m, n, k, dst.as_mut_ptr(), 1, i(dst_rs), accumulate, a.as_ptr(), i(a_cs), i(a_rs), b.as_ptr(), i(b_cs), i(b_rs),
                if accumulate { 1.0 } else { 0.0 }, alpha, false, false, false, gemm::Parallelism::None,
            );
        }
    }

    /// Query rows are processed in blocks of this many, each against keys up to its last row
    /// only: the causal half of the scores is never computed.
    const ROW_BLOCK: usize = 64;

    /// Row blocks `r0..r1` of a sequence of `t`, with the first key any of their rows sees.
    fn row_blocks(t: usize, window: Option<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
        (0..t).step_by(ROW_BLOCK).map(move |r0| (r0, (r0 + ROW_BLOCK).min(t), first_key(r0, window)))
    }

    /// Keys query `i` may see: `lo(i) ..= i`.
    fn first_key(i: usize, window: Option<usize>) -> usize {
        window.map_or(0, |w| i.saturating_sub(w))
    }

    #[derive(Debug, Clone)]
    struct AttnState {
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        probs: FlexTensor,
        scale: f32,
        window: Option<usize>,
    }

    #[derive(Debug)]
    struct CausalAttention;

    impl Backward<Flex, 3> for CausalAttention {
        type State = AttnState;

        fn backward(self, ops: Ops<AttnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [nq, nk, nv] = ops.parents;
            let d_out = contiguous(grads.consume::<Flex>(&ops.node));
            let AttnState { q, k, v, probs, scale, window } = ops.state;
            let shape = q.layout().shape().clone();
            let (t, d) = (shape[2], shape[3]);
            let (q, k, v, p, go) = (q.as_slice::<f32>().unwrap(), k.as_slice::<f32>().unwrap(), v.as_slice::<f32>().unwrap(), probs.as_slice::<f32>().unwrap(), d_out.as_slice::<f32>().unwrap());
            let n = q.len();
            let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            dq.par_chunks_mut(t * d)
                .zip(dk.par_chunks_mut(t * d))
                .zip(dv.par_chunks_mut(t * d))
                .enumerate()
                .for_each_init(
                    || vec![0f32; ROW_BLOCK * t],
                    |ds, (hd, ((dq, dk), dv))| {
                        let (o, po) = (hd * t * d, hd * t * t);
                        let (q, k, v, go, p) = (&q[o..o + t * d], &k[o..o + t * d], &v[o..o + t * d], &go[o..o + t * d], &p[po..po + t * t]);
                        for (r0, r1, k0) in row_blocks(t, window) {
                            let (rows, nk) = (r1 - r0, r1 - k0);
                            // dP = dO V^T, then dS = P * (dP - rowsum(P * dP)) * scale (0 off the mask).
                            mm(rows, nk, d, ds, nk, false, &go[r0 * d..], d, 1, &v[k0 * d..], 1, d, 1.0);
                            for i in r0..r1 {
                                let row = &mut ds[(i - r0) * nk..(i - r0 + 1) * nk];
                                let prow = &p[i * t + k0..i * t + r1];
                                let (lo, hi) = (first_key(i, window) - k0, i - k0);
                                let delta: f32 = (lo..=hi).map(|j| prow[j] * row[j]).sum();
                                for (j, x) in row.iter_mut().enumerate() {
                                    *x = if j < lo || j > hi { 0.0 } else { prow[j] * (*x - delta) * scale };
                                }
                            }
                            mm(rows, d, nk, &mut dq[r0 * d..], d, false, ds, nk, 1, &k[k0 * d..], d, 1, 1.0); // dQ = dS K
                            mm(nk, d, rows, &mut dk[k0 * d..], d, true, ds, 1, nk, &q[r0 * d..], d, 1, 1.0); // dK += dS^T Q
                            mm(nk, d, rows, &mut dv[k0 * d..], d, true, &p[r0 * t + k0..], 1, t, &go[r0 * d..], d, 1, 1.0); // dV += P^T dO
                        }
                    },
                );
            for (node, grad) in [(nq, dq), (nk, dk), (nv, dv)] {
                if let Some(node) = node {
                    grads.register::<Flex>(node.id, from_vec(grad, shape.clone()));
                }
            }
        }
    }

    fn attention_fused<C: CheckpointStrategy>(q: AdTensor<C>, k: AdTensor<C>, v: AdTensor<C>, scale: f32, window: Option<usize>) -> AdTensor<C> {
        let prep = CausalAttention.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful();
        let (q, k, v) = (contiguous(q.into_primitive()), contiguous(k.into_primitive()), contiguous(v.into_primitive()));
        let shape = q.layout().shape().clone();
        assert_eq!(&shape, k.layout().shape(), "q and k shapes");
        assert_eq!(&shape, v.layout().shape(), "q and v shapes");
        let (b, h, t, d) = (shape[0], shape[1], shape[2], shape[3]);
        let (qs, ks, vs) = (q.as_slice::<f32>().unwrap(), k.as_slice::<f32>().unwrap(), v.as_slice::<f32>().unwrap());
        let mut out = vec![0f32; b * h * t * d];
        let mut probs = vec![0f32; b * h * t * t];
        out.par_chunks_mut(t * d).zip(probs.par_chunks_mut(t * t)).enumerate().for_each(|(hd, (out, p))| {
            let o = hd * t * d;
            let (q, k, v) = (&qs[o..o + t * d], &ks[o..o + t * d], &vs[o..o + t * d]);
            for (r0, r1, k0) in row_blocks(t, window) {
                let (rows, nk) = (r1 - r0, r1 - k0);
                mm(rows, nk, d, &mut p[r0 * t + k0..], t, false, &q[r0 * d..], d, 1, &k[k0 * d..], 1, d, scale); // S = scale Q K^T
                for i in r0..r1 {
                    let row = &mut p[i * t..(i + 1) * t];
                    let lo = first_key(i, window);
                    row[..lo].fill(0.0);
                    row[i + 1..].fill(0.0);
                    simd::softmax_in_place(&mut row[lo..=i]);
                }
                mm(rows, d, nk, &mut out[r0 * d..], d, false, &p[r0 * t + k0..], t, 1, &v[k0 * d..], d, 1, 1.0); // O = P V
            }
        });
        let output = from_vec(out, shape.clone());
        match prep {
            OpsKind::Tracked(prep) => {
                let probs = from_vec(probs, burn::tensor::Shape::new([b, h, t, t]));
                prep.finish(AttnState { q, k, v, probs, scale, window }, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// Row kernels, compiled for AVX-512 and AVX2 and picked at run time (a plain build targets
/// x86-64 v1, where the compiler would only use SSE2). Lanes are accumulated separately so the
/// loops vectorise without fast-math.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
mod simd {
    const LANES: usize = 16;

    /// `e^x` to about 1 ulp for `x` in [-87, 88] (Cephes `expf`), written to vectorise.
    #[inline(always)]
    fn exp(x: f32) -> f32 {
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
        // 2^n from the integer n held in t's low mantissa bits (no float->int cast, which
        // would not vectorise).
        e * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23)
    }

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

    macro_rules! dispatch {
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

    dispatch!(softmax_in_place, softmax_generic, (row: &mut [f32]) -> ());
    dispatch!(softcap_lse_row, lse_row_generic, (row: &mut [f32], cap: f32) -> f32);
    dispatch!(softcap_ce_backward_row, backward_row_generic, (row: &mut [f32], lse: f32, target: usize, cap: f32, scale: f32) -> ());

    #[cfg(test)]
    mod tests {
        #[test]
        fn exp_matches_std() {
            let mut worst = 0f32;
            for i in -8000..8000 {
                let x = i as f32 / 100.0;
                let rel = ((super::exp(x) - x.exp()) / x.exp()).abs();
                worst = worst.max(rel);
            }
            assert!(worst < 1e-6, "max relative error {worst}");
        }

        #[test]
        fn softcap_matches_tanh() {
            for i in -4000..4000 {
                let z = i as f32 / 40.0;
                let want = 15.0 * (z / 15.0).tanh();
                assert!((super::softcap(z, 15.0) - want).abs() < 4e-6, "z {z}");
            }
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The fused op and the tensor formulation give the same loss and the same gradients, for
    /// the logits and for a weight upstream of them.
    #[test]
    fn fused_matches_reference_loss_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let (n, c, v) = (37, 16, 300);
        let h = Tensor::<2>::random([n, c], Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::<2>::random([c, v], Distribution::Normal(0.0, 3.0), &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new((0..n as i64).map(|i| (i * 7919) % v as i64).collect::<Vec<_>>(), [n]), &device);
        let run = |fused: bool| {
            let w = w0.clone().detach().require_grad();
            let z = h.clone().matmul(w.clone());
            let loss = if fused { softcap_cross_entropy(z, targets.clone(), 15.0) } else { softcap_cross_entropy_reference(z, targets.clone(), 15.0) };
            let grads = loss.clone().backward();
            (loss.into_scalar::<f32>(), w.grad(&grads).unwrap().into_data().try_into_vec::<f32>().unwrap())
        };
        let z = h.clone().matmul(w0.clone().require_grad());
        assert!(flex::try_fused(z, &targets, 15.0).is_ok(), "flex under autodiff takes the fused path");
        let (loss_ref, grad_ref) = run(false);
        let (loss_fused, grad_fused) = run(true);
        assert!((loss_ref - loss_fused).abs() < 1e-5 * loss_ref.abs().max(1.0), "{loss_ref} vs {loss_fused}");
        let scale = grad_ref.iter().fold(0f32, |m, g| m.max(g.abs()));
        for (a, b) in grad_ref.iter().zip(&grad_fused) {
            assert!((a - b).abs() < 1e-4 * scale, "{a} vs {b}");
        }
    }

    /// The fused attention and Burn's (fallback) attention agree on the output and on the
    /// gradients of q, k and v, with and without a sliding window.
    #[test]
    fn fused_attention_matches_reference() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let (b, h, t, d) = (2, 3, 150, 8); // three row blocks, the last one partial
        let r = || Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
        let (q0, k0, v0, w) = (r(), r(), r(), r());
        for window in [None, Some(5), Some(70)] {
            let run = |fused: bool| {
                let (q, k, v) = (q0.clone().require_grad(), k0.clone().require_grad(), v0.clone().require_grad());
                // v through a transpose, as the model's (non-contiguous input).
                let vt = v.clone().swap_dims(1, 2).swap_dims(1, 2);
                let y = if fused {
                    let y = flex::try_attention(q.clone(), k.clone(), vt, 0.35, window);
                    assert!(y.is_ok(), "flex under autodiff takes the fused path");
                    y.ok().unwrap()
                } else {
                    causal_attention_reference(q.clone(), k.clone(), vt, 0.35, window)
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                let flat = |t: Tensor<4>| t.into_data().try_into_vec::<f32>().unwrap();
                [flat(y), flat(q.grad(&grads).unwrap()), flat(k.grad(&grads).unwrap()), flat(v.grad(&grads).unwrap())]
            };
            let (want, got) = (run(false), run(true));
            for (name, (a, b)) in ["out", "dq", "dk", "dv"].iter().zip(want.iter().zip(&got)) {
                let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-4 * scale.max(1.0), "{name} window {window:?}: {x} vs {y}");
                }
            }
        }
    }

    /// Without autodiff (evaluation), the op still gives the reference loss.
    #[test]
    fn fused_without_autodiff_is_the_reference() {
        let device = Device::flex();
        let z = Tensor::<2>::random([5, 40], Distribution::Normal(0.0, 20.0), &device);
        let t = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 39, 7, 7, 20], [5]), &device);
        let a = softcap_cross_entropy(z.clone(), t.clone(), 15.0).into_scalar::<f32>();
        let b = softcap_cross_entropy_reference(z, t, 15.0).into_scalar::<f32>();
        assert_eq!(a, b);
    }
}
