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
//! The rest follow the same pattern, each with its tensor formulation beside it: [`matmul`]
//! (one `gemm` into a fresh buffer: flex's own matmul zero-fills and then copies its output),
//! [`rms_norm`], [`rotary_rms_norm`] (rotary embedding then QK-norm), [`relu_squared`], and for
//! inference [`softcap`].
//!
//! The math is unchanged: `loss = mean_i( logsumexp(c_i) - c_i[t_i] )` with
//! `c = cap * tanh(z / cap)`, and `dloss/dz = (softmax(c) - onehot(t)) * (1 - (c/cap)^2) / N`.
//! Every other backend (and flex without autodiff, for the training-only ops) runs the plain
//! tensor formulation (e.g. [`crate::model::softcap_cross_entropy_reference`]); `tests` check
//! each pair agrees, gradients included. [`set_enabled`] switches every kernel off at once.

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
///
/// On flex one fused pass each way; on LibTorch devices PyTorch's own attention kernel
/// (FlashAttention on CUDA), as the reference takes its kernel from a library.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<4> {
    #[cfg(any(feature = "flex", feature = "tch"))]
    let (q, k, v) = if ENABLED.load(Ordering::Relaxed) {
        #[cfg(feature = "flex")]
        let (q, k, v) = match flex::try_attention(q, k, v, scale, window) {
            Ok(y) => return y,
            Err(qkv) => qkv,
        };
        #[cfg(feature = "tch")]
        let (q, k, v) = match torch::try_attention(q, k, v, scale, window) {
            Ok(y) => return y,
            Err(qkv) => qkv,
        };
        (q, k, v)
    } else {
        (q, k, v)
    };
    causal_attention_reference(q, k, v, scale, window)
}

/// [`causal_attention`] through Burn's attention op, with a window mask when `window` is set.
pub fn causal_attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<4> {
    let [b, h, t, _] = q.dims();
    let mask = window.filter(|&w| w < t).map(|w| crate::model::window_mask(b, h, t, w, &q.device()));
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: true };
    attention(q, k, v, mask, None, options)
}

/// Whether `t` lives on flex (with or without autodiff), where the kernels of this file run.
pub fn is_flex(t: &Tensor<2>) -> bool {
    #[cfg(feature = "flex")]
    {
        use burn::backend::{Autodiff, Flex};
        t.clone().try_into_primitive::<Flex>().is_ok() || t.clone().try_into_primitive::<Autodiff<Flex>>().is_ok()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = t;
        false
    }
}

/// `x @ w` for `x` `[N, K]` and `w` `[K, M]`: `[N, M]`.
///
/// On flex (with or without autodiff) one `gemm` call into a fresh buffer, and two for the
/// backward: flex's own matmul zero-fills its output and then copies it into an aligned one
/// (see runner/benches/README.md, "Upstream limits"), 13-15% of a step at d256.
pub fn matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if ENABLED.load(Ordering::Relaxed) {
        return match flex::try_matmul(x, w) {
            Ok(y) => y,
            Err((x, w)) => x.matmul(w),
        };
    }
    x.matmul(w)
}

/// RMSNorm over the last dimension, without a learnable weight: `x / sqrt(mean(x^2) + eps)`
/// with eps = f32 machine epsilon (PyTorch's `F.rms_norm` default).
///
/// On flex one row-parallel pass forward and one backward, instead of the ~5 tensor ops (and
/// their backwards) of [`crate::model::rms_norm_reference`].
pub fn rms_norm<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    #[cfg(feature = "flex")]
    if ENABLED.load(Ordering::Relaxed) {
        return match flex::try_rms_norm(x) {
            Ok(y) => y,
            Err(x) => crate::model::rms_norm_reference(x),
        };
    }
    crate::model::rms_norm_reference(x)
}

/// `rms_norm(rotary(x, cos, sin))`, the attention's rotary embedding then QK-norm, for `x`
/// `[B, H, T, D]` and the tables `[1, 1, T, D/2]` of [`crate::model::rotary_tables`]. On flex
/// one row-parallel pass each way instead of ~10 tensor ops (halves, products, concatenation,
/// the norm) and their backwards.
pub fn rotary_rms_norm(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if ENABLED.load(Ordering::Relaxed) {
        return match flex::try_rotary_rms_norm(x, cos, sin) {
            Ok(y) => y,
            Err(x) => rms_norm(crate::model::rotary(x, cos, sin)),
        };
    }
    rms_norm(crate::model::rotary(x, cos, sin))
}

/// `relu(x)^2`, the MLP's activation. On flex one pass forward and one backward (`dx = 2
/// relu(x) dy`) instead of two ops and their backwards, each a fresh `[B, T, 4C]` tensor.
pub fn relu_squared<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    #[cfg(feature = "flex")]
    if ENABLED.load(Ordering::Relaxed) {
        return match flex::try_relu_squared(x) {
            Ok(y) => y,
            Err(x) => relu_squared_reference(x),
        };
    }
    relu_squared_reference(x)
}

/// [`relu_squared`] as tensor ops.
pub fn relu_squared_reference<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    burn::tensor::activation::relu(x).square()
}

/// The logit soft-cap `cap * tanh(z / cap)`, for inference (evaluation, the causality probe).
///
/// On flex without autodiff it runs in place, row-parallel and vectorised; Burn's `tanh` there
/// is scalar libm on one core, which made evaluation most of a short CPU run's overhead.
pub fn softcap<const N: usize>(z: Tensor<N>, cap: f64) -> Tensor<N> {
    #[cfg(feature = "flex")]
    if ENABLED.load(Ordering::Relaxed) {
        return match flex::try_softcap(z, cap) {
            Ok(y) => y,
            Err(z) => softcap_reference(z, cap),
        };
    }
    softcap_reference(z, cap)
}

/// [`softcap`] as tensor ops.
pub fn softcap_reference<const N: usize>(z: Tensor<N>, cap: f64) -> Tensor<N> {
    z.div_scalar(cap).tanh().mul_scalar(cap)
}

/// PyTorch's `scaled_dot_product_attention` on LibTorch tensors: FlashAttention on CUDA for
/// full causal attention, memory-efficient attention with a mask for sliding windows, and
/// PyTorch's CPU kernels on `tch-cpu`. Burn's own attention under autodiff runs its unfused
/// fallback (`[B, H, T, T]` scores, mask and probabilities, and their backwards), which at
/// T = 2048 is most of a step's memory and time (runner/benches/README.md, "GPU").
///
/// The backward is libtorch's own: the forward records libtorch's graph of the kernel, and the
/// backward asks libtorch for the gradients of `sum(y * dy)` with respect to q, k and v, which
/// are exactly the input gradients for the output gradient `dy`.
#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated in Burn 0.22, and is how this project reaches CUDA.
mod torch {
    use std::sync::{Arc, Mutex};

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::libtorch::TchTensor;
    use burn::backend::{Autodiff, LibTorch};
    use burn::prelude::*;

    type AdTensor<C> = burn::backend::tensor::FloatTensor<Autodiff<LibTorch, C>>;

    /// Runs PyTorch's attention when q, k and v are LibTorch tensors (with or without
    /// autodiff); hands them back otherwise.
    #[allow(clippy::type_complexity)]
    pub fn try_attention(
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        scale: f64,
        window: Option<usize>,
    ) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)> {
        macro_rules! on_autodiff {
            ($c:ty) => {
                if let (Ok(pq), Ok(pk), Ok(pv)) = (
                    q.clone().try_into_primitive::<Autodiff<LibTorch, $c>>(),
                    k.clone().try_into_primitive::<Autodiff<LibTorch, $c>>(),
                    v.clone().try_into_primitive::<Autodiff<LibTorch, $c>>(),
                ) {
                    return Ok(Tensor::from_primitive::<Autodiff<LibTorch, $c>>(attention_ad::<$c>(pq, pk, pv, scale, window)));
                }
            };
        }
        if q.device().gradient_checkpointing_strategy().is_some() {
            on_autodiff!(NoCheckpointing);
            on_autodiff!(BalancedCheckpointing);
            return Err((q, k, v));
        }
        if let (Ok(pq), Ok(pk), Ok(pv)) = (q.clone().try_into_primitive::<LibTorch>(), k.clone().try_into_primitive::<LibTorch>(), v.clone().try_into_primitive::<LibTorch>()) {
            let y = tch::no_grad(|| sdpa(&pq.tensor, &pk.tensor, &pv.tensor, scale, window));
            return Ok(Tensor::from_primitive::<LibTorch>(TchTensor::new(y)));
        }
        Err((q, k, v))
    }

    /// Causal attention of `[B, H, T, D]` tensors; query i sees keys `i - window ..= i`.
    fn sdpa(q: &tch::Tensor, k: &tch::Tensor, v: &tch::Tensor, scale: f64, window: Option<usize>) -> tch::Tensor {
        let t = q.size()[2];
        match window.map(|w| w as i64).filter(|&w| w < t) {
            None => tch::Tensor::scaled_dot_product_attention(q, k, v, None::<tch::Tensor>, 0.0, true, scale, false),
            Some(w) => {
                // A boolean mask is "may attend" in PyTorch; it replaces `is_causal`.
                let pos = tch::Tensor::arange(t, (tch::Kind::Int64, q.device()));
                let behind = pos.unsqueeze(1) - pos.unsqueeze(0); // [T, T]: i - j
                let mask = behind.ge(0).logical_and(&behind.le(w));
                tch::Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, scale, false)
            }
        }
    }

    /// What the backward needs: the output with libtorch's graph, and the graph's leaves.
    struct Saved {
        y: tch::Tensor,
        inputs: [tch::Tensor; 3],
    }

    /// Shared, since Burn clones a backward's state; `Mutex` because a `tch::Tensor` is `Send`
    /// but not `Sync`.
    #[derive(Clone)]
    struct State(Arc<Mutex<Saved>>);

    impl std::fmt::Debug for State {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("SdpaState")
        }
    }

    #[derive(Debug)]
    struct Sdpa;

    impl Backward<LibTorch, 3> for Sdpa {
        type State = State;

        fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dy = grads.consume::<LibTorch>(&ops.node);
            let saved = ops.state.0.lock().unwrap_or_else(|e| e.into_inner());
            let objective = (&saved.y * dy.tensor.detach()).sum(tch::Kind::Float);
            let input_grads = tch::Tensor::run_backward(&[objective], &saved.inputs, false, false);
            for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
                if let Some(parent) = parent {
                    grads.register::<LibTorch>(parent.id, TchTensor::new(grad));
                }
            }
        }
    }

    fn attention_ad<C: CheckpointStrategy>(q: AdTensor<C>, k: AdTensor<C>, v: AdTensor<C>, scale: f64, window: Option<usize>) -> AdTensor<C> {
        let prep = Sdpa.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful();
        let (q, k, v) = (q.into_primitive().tensor, k.into_primitive().tensor, v.into_primitive().tensor);
        match prep {
            OpsKind::Tracked(prep) => {
                let inputs = [q.detach().requires_grad_(true), k.detach().requires_grad_(true), v.detach().requires_grad_(true)];
                let y = tch::with_grad(|| sdpa(&inputs[0], &inputs[1], &inputs[2], scale, window));
                let output = TchTensor::new(y.detach());
                prep.finish(State(Arc::new(Mutex::new(Saved { y, inputs }))), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(TchTensor::new(tch::no_grad(|| sdpa(&q, &k, &v, scale, window)))),
        }
    }
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

    /// Returns `Ok($op::<C>(primitives..., args...))` as a `Tensor<$d>` when the tensors `$t...`
    /// all live on flex under autodiff (either checkpointing strategy); falls through otherwise.
    macro_rules! on_autodiff_flex {
        ($op:ident, [$($t:ident),+] $(, $arg:expr)*; $d:tt) => {
            if let ($(Ok($t),)+) = ($($t.clone().try_into_primitive::<Autodiff<Flex, NoCheckpointing>>(),)+) {
                return Ok(Tensor::<$d>::from_primitive::<Autodiff<Flex, NoCheckpointing>>($op::<NoCheckpointing>($($t),+ $(, $arg)*)));
            }
            if let ($(Ok($t),)+) = ($($t.clone().try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>(),)+) {
                return Ok(Tensor::<$d>::from_primitive::<Autodiff<Flex, BalancedCheckpointing>>($op::<BalancedCheckpointing>($($t),+ $(, $arg)*)));
            }
        };
    }

    /// Runs the fused op when `z` is a flex tensor under autodiff; hands `z` back otherwise.
    pub fn try_fused(z: Tensor<2>, targets: &Tensor<1, Int>, cap: f64) -> Result<Tensor<1>, Tensor<2>> {
        if !matches!(z.device().gradient_checkpointing_strategy(), Some(_)) {
            return Err(z);
        }
        // `drop(z)` before the op: the primitive must be the buffer's only owner for the op to
        // overwrite it in place.
        if let Ok(p) = z.clone().try_into_primitive::<Autodiff<Flex, NoCheckpointing>>() {
            drop(z);
            return Ok(Tensor::from_primitive::<Autodiff<Flex, NoCheckpointing>>(fused::<NoCheckpointing>(p, targets, cap)));
        }
        if let Ok(p) = z.clone().try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>() {
            drop(z);
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
        on_autodiff_flex!(attention_fused, [q, k, v], scale as f32, window; 4);
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
        assert!(m > 0 && n > 0 && (m - 1) * dst_rs + n - 1 < dst.len());
        // SAFETY: the assert keeps every element of dst that gemm writes inside the slice.
        unsafe { gemm_into(m, n, k, dst.as_mut_ptr(), dst_rs, accumulate, a, a_rs, a_cs, b, b_rs, b_cs, alpha) }
    }

    /// Is `t` an f32 tensor whose rows and columns can be handed to `gemm` as strides?
    fn gemm_ready(t: &FlexTensor) -> bool {
        t.dtype() == DType::F32 && t.layout().strides().iter().all(|&s| s >= 0)
    }

    /// `t`'s f32 elements from its first one, with its (row, column) strides.
    fn strided2(t: &FlexTensor) -> (&[f32], usize, usize) {
        let l = t.layout();
        let s = l.strides();
        (&t.storage::<f32>()[l.start_offset()..], s[0] as usize, s[1] as usize)
    }

    /// Matmuls at least this large (m * n * k) use every thread, as flex's own matmul does.
    const PARALLEL_GEMM: usize = 192 * 192 * 192;

    /// `a[m, k] @ b[k, n]` into a fresh `[m, n]` buffer that nothing zero-fills first.
    #[allow(clippy::too_many_arguments)]
    fn gemm_new(m: usize, n: usize, k: usize, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize) -> Vec<f32> {
        if k == 0 || m == 0 || n == 0 {
            return vec![0.0; m * n];
        }
        let mut out: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(m * n);
        // SAFETY: MaybeUninit needs no initialisation.
        unsafe { out.set_len(m * n) };
        // SAFETY: `gemm` with read_dst = false writes every one of the m * n elements (k > 0),
        // so the buffer is initialised when it becomes a Vec<f32>.
        unsafe {
            gemm_into(m, n, k, out.as_mut_ptr().cast(), n, false, a, a_rs, a_cs, b, b_rs, b_cs, 1.0);
            let mut out = std::mem::ManuallyDrop::new(out);
            Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity())
        }
    }

    /// `dst[m, n] (+)= alpha * a[m, k] @ b[k, n]` for a `dst` of row stride `dst_rs`, threaded
    /// when large and not already inside a parallel loop.
    ///
    /// SAFETY: `dst` must be valid for writes at every `i * dst_rs + j`, i < m, j < n.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_into(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, accumulate: bool, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, alpha: f32) {
        let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
        assert!(m > 0 && n > 0 && k > 0 && last(a_rs, a_cs, m, k) < a.len() && last(b_rs, b_cs, k, n) < b.len());
        let parallelism = if m * n * k >= PARALLEL_GEMM && rayon::current_thread_index().is_none() {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        let i = |x: usize| x as isize;
        // SAFETY: the assert keeps the operands' strides inside their slices; the caller vouches for dst.
        unsafe {
            gemm::gemm(
                m, n, k, dst, 1, i(dst_rs), accumulate, a.as_ptr(), i(a_cs), i(a_rs), b.as_ptr(), i(b_cs), i(b_rs),
                if accumulate { 1.0 } else { 0.0 }, alpha, false, false, false, parallelism,
            );
        }
    }

    /// Runs the gemm matmul when `x` and `w` are flex tensors (with or without autodiff).
    pub fn try_matmul(x: Tensor<2>, w: Tensor<2>) -> Result<Tensor<2>, (Tensor<2>, Tensor<2>)> {
        if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
            return Err((x, w));
        }
        if x.device().gradient_checkpointing_strategy().is_some() {
            on_autodiff_flex!(matmul_ad, [x, w]; 2);
            return Err((x, w));
        }
        if let (Ok(px), Ok(pw)) = (x.clone().try_into_primitive::<Flex>(), w.clone().try_into_primitive::<Flex>()) {
            if gemm_ready(&px) && gemm_ready(&pw) {
                return Ok(Tensor::from_primitive::<Flex>(matmul_plain(&px, &pw)));
            }
        }
        Err((x, w))
    }

    fn matmul_plain(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
        let (n, k, m) = (x.layout().shape()[0], x.layout().shape()[1], w.layout().shape()[1]);
        assert_eq!(w.layout().shape()[0], k, "matmul: [N, K] @ [K, M]");
        let ((xs, x_rs, x_cs), (ws, w_rs, w_cs)) = (strided2(x), strided2(w));
        from_vec(gemm_new(n, m, k, xs, x_rs, x_cs, ws, w_rs, w_cs), burn::tensor::Shape::new([n, m]))
    }

    /// Saved for the backward pass: both operands (views into their own buffers).
    #[derive(Debug, Clone)]
    struct MatmulState {
        x: FlexTensor,
        w: FlexTensor,
    }

    #[derive(Debug)]
    struct Matmul;

    impl Backward<Flex, 2> for Matmul {
        type State = MatmulState;

        fn backward(self, ops: Ops<MatmulState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [nx, nw] = ops.parents;
            let dy = grads.consume::<Flex>(&ops.node);
            let dy = if gemm_ready(&dy) { dy } else { dy.to_contiguous() };
            let MatmulState { x, w } = ops.state;
            let (n, k, m) = (x.layout().shape()[0], x.layout().shape()[1], w.layout().shape()[1]);
            let ((xs, x_rs, x_cs), (ws, w_rs, w_cs), (dys, dy_rs, dy_cs)) = (strided2(&x), strided2(&w), strided2(&dy));
            if let Some(node) = nx {
                // dX[n, k] = dY[n, m] @ W^T[m, k]
                let dx = gemm_new(n, k, m, dys, dy_rs, dy_cs, ws, w_cs, w_rs);
                grads.register::<Flex>(node.id, from_vec(dx, burn::tensor::Shape::new([n, k])));
            }
            if let Some(node) = nw {
                // dW[k, m] = X^T[k, n] @ dY[n, m]
                let dw = gemm_new(k, m, n, xs, x_cs, x_rs, dys, dy_rs, dy_cs);
                grads.register::<Flex>(node.id, from_vec(dw, burn::tensor::Shape::new([k, m])));
            }
        }
    }

    fn matmul_ad<C: CheckpointStrategy>(x: AdTensor<C>, w: AdTensor<C>) -> AdTensor<C> {
        let prep = Matmul.prepare::<C>([x.node(), w.node()]).compute_bound().stateful();
        let ready = |t: FlexTensor| if gemm_ready(&t) { t } else { t.to_contiguous() };
        let (x, w) = (ready(x.into_primitive()), ready(w.into_primitive()));
        let output = matmul_plain(&x, &w);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(MatmulState { x, w }, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    /// Runs the fused RMSNorm when `x` is a flex f32 tensor (with or without autodiff).
    pub fn try_rms_norm<const N: usize>(x: Tensor<N>) -> Result<Tensor<N>, Tensor<N>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        if x.device().gradient_checkpointing_strategy().is_some() {
            on_autodiff_flex!(rms_norm_ad, [x], None; N);
            return Err(x);
        }
        if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
            return Ok(Tensor::from_primitive::<Flex>(rms_norm_plain(&contiguous(p), None).0));
        }
        Err(x)
    }

    /// The rotary tables' values, `[T * D/2]` each.
    #[derive(Debug)]
    struct RotaryTables {
        cos: Vec<f32>,
        sin: Vec<f32>,
    }

    /// Runs the fused rotary + RMSNorm when `x` is a flex f32 tensor (with or without autodiff)
    /// and the tables match its shape.
    pub fn try_rotary_rms_norm(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
        let [_, _, t, d] = x.dims();
        if x.dtype() != DType::F32 || d % 2 != 0 || cos.dims() != [1, 1, t, d / 2] || sin.dims() != [1, 1, t, d / 2] {
            return Err(x);
        }
        let values = |table: &Tensor<4>| table.to_data().convert::<f32>().try_into_vec::<f32>().ok();
        let (Some(cos), Some(sin)) = (values(cos), values(sin)) else { return Err(x) };
        let tables = std::sync::Arc::new(RotaryTables { cos, sin });
        if x.device().gradient_checkpointing_strategy().is_some() {
            on_autodiff_flex!(rms_norm_ad, [x], Some(tables.clone()); 4);
            return Err(x);
        }
        if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
            return Ok(Tensor::from_primitive::<Flex>(rms_norm_plain(&contiguous(p), Some(&tables)).0));
        }
        Err(x)
    }

    /// Rows of the last dimension per parallel task: enough work to outweigh the scheduling.
    fn rows_per_task(d: usize) -> usize {
        (16_384 / d.max(1)).max(1)
    }

    /// The normed tensor (rotated first when `rotary` is given; `x` is then `[.., T, D]`) and
    /// each row's `1 / sqrt(mean(y^2) + eps)`, `y` the row that is normed.
    fn rms_norm_plain(x: &FlexTensor, rotary: Option<&RotaryTables>) -> (FlexTensor, Vec<f32>) {
        let shape = x.layout().shape().clone();
        let dims = shape.num_dims();
        let (t, d) = (shape[dims.saturating_sub(2)], shape[dims - 1]);
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let mut y = vec![0f32; xs.len()];
        let mut r = vec![0f32; xs.len() / d.max(1)];
        let rows = rows_per_task(d);
        y.par_chunks_mut(rows * d).zip(xs.par_chunks(rows * d)).zip(r.par_chunks_mut(rows)).enumerate().for_each(|(i, ((y, x), r))| match rotary {
            Some(tab) => simd::rotary_rms_rows(x, y, r, &tab.cos, &tab.sin, d, t, i * rows),
            None => simd::rms_norm_rows(x, y, r, d),
        });
        (from_vec(y, shape), r)
    }

    #[derive(Debug, Clone)]
    struct RmsState {
        x: FlexTensor,
        inv_rms: std::sync::Arc<Vec<f32>>,
        rotary: Option<std::sync::Arc<RotaryTables>>,
    }

    #[derive(Debug)]
    struct RmsNorm;

    impl Backward<Flex, 1> for RmsNorm {
        type State = RmsState;

        fn backward(self, ops: Ops<RmsState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [parent] = ops.parents;
            let dy = contiguous(grads.consume::<Flex>(&ops.node));
            let Some(parent) = parent else { return };
            let RmsState { x, inv_rms, rotary } = ops.state;
            let shape = x.layout().shape().clone();
            let dims = shape.num_dims();
            let (t, d) = (shape[dims.saturating_sub(2)], shape[dims - 1]);
            let (xs, dys) = (x.as_slice::<f32>().unwrap(), dy.as_slice::<f32>().unwrap());
            let mut dx = vec![0f32; xs.len()];
            let rows = rows_per_task(d);
            dx.par_chunks_mut(rows * d)
                .zip(xs.par_chunks(rows * d))
                .zip(dys.par_chunks(rows * d))
                .zip(inv_rms.par_chunks(rows))
                .enumerate()
                .for_each(|(i, (((dx, x), dy), r))| match &rotary {
                    Some(tab) => simd::rotary_rms_backward_rows(x, dy, r, &tab.cos, &tab.sin, dx, d, t, i * rows),
                    None => simd::rms_norm_backward_rows(x, dy, r, dx, d),
                });
            grads.register::<Flex>(parent.id, from_vec(dx, shape));
        }
    }

    fn rms_norm_ad<C: CheckpointStrategy>(x: AdTensor<C>, rotary: Option<std::sync::Arc<RotaryTables>>) -> AdTensor<C> {
        let prep = RmsNorm.prepare::<C>([x.node()]).compute_bound().stateful();
        let x = contiguous(x.into_primitive());
        let (output, inv_rms) = rms_norm_plain(&x, rotary.as_deref());
        match prep {
            OpsKind::Tracked(prep) => prep.finish(RmsState { x, inv_rms: std::sync::Arc::new(inv_rms), rotary }, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    /// Runs the fused `relu(x)^2` when `x` is a flex f32 tensor (with or without autodiff).
    pub fn try_relu_squared<const N: usize>(x: Tensor<N>) -> Result<Tensor<N>, Tensor<N>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        if x.device().gradient_checkpointing_strategy().is_some() {
            on_autodiff_flex!(relu_squared_ad, [x]; N);
            return Err(x);
        }
        if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
            return Ok(Tensor::from_primitive::<Flex>(relu_squared_plain(&contiguous(p))));
        }
        Err(x)
    }

    /// Elements per parallel task of the element-wise kernels.
    const ELEMENTS_PER_TASK: usize = 1 << 16;

    fn relu_squared_plain(x: &FlexTensor) -> FlexTensor {
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let mut y = vec![0f32; xs.len()];
        y.par_chunks_mut(ELEMENTS_PER_TASK).zip(xs.par_chunks(ELEMENTS_PER_TASK)).for_each(|(y, x)| simd::relu_squared(x, y));
        from_vec(y, x.layout().shape().clone())
    }

    #[derive(Debug)]
    struct ReluSquared;

    impl Backward<Flex, 1> for ReluSquared {
        /// The input (contiguous).
        type State = FlexTensor;

        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [parent] = ops.parents;
            let dy = contiguous(grads.consume::<Flex>(&ops.node));
            let Some(parent) = parent else { return };
            let x = ops.state;
            let (xs, dys) = (x.as_slice::<f32>().unwrap(), dy.as_slice::<f32>().unwrap());
            let mut dx = vec![0f32; xs.len()];
            dx.par_chunks_mut(ELEMENTS_PER_TASK)
                .zip(xs.par_chunks(ELEMENTS_PER_TASK))
                .zip(dys.par_chunks(ELEMENTS_PER_TASK))
                .for_each(|((dx, x), dy)| simd::relu_squared_backward(x, dy, dx));
            grads.register::<Flex>(parent.id, from_vec(dx, x.layout().shape().clone()));
        }
    }

    fn relu_squared_ad<C: CheckpointStrategy>(x: AdTensor<C>) -> AdTensor<C> {
        let prep = ReluSquared.prepare::<C>([x.node()]).compute_bound().stateful();
        let x = contiguous(x.into_primitive());
        let output = relu_squared_plain(&x);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(x, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    /// Runs the vectorised soft-cap when `z` is a flex f32 tensor without autodiff.
    pub fn try_softcap<const N: usize>(z: Tensor<N>, cap: f64) -> Result<Tensor<N>, Tensor<N>> {
        if z.device().gradient_checkpointing_strategy().is_some() {
            return Err(z);
        }
        let Ok(p) = z.clone().try_into_primitive::<Flex>() else { return Err(z) };
        if p.dtype() != DType::F32 {
            return Err(z);
        }
        drop(z); // the primitive alone owns the buffer: it is capped in place
        let mut p = contiguous(p);
        let shape = p.layout().shape().clone();
        let d = shape[shape.num_dims() - 1].max(1);
        let whole_buffer = p.layout().start_offset() == 0 && p.storage::<f32>().len() == shape.num_elements();
        if !whole_buffer || p.try_storage_mut::<f32>().is_none() {
            p = from_vec(p.as_slice::<f32>().unwrap().to_vec(), shape);
        }
        let cap = cap as f32;
        p.storage_mut::<f32>().par_chunks_mut(rows_per_task(d) * d).for_each(|rows| simd::softcap_in_place(rows, cap));
        Ok(Tensor::from_primitive::<Flex>(p))
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
    use prepare::fastmath::{LANES, exp};

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

    prepare::multiversion!(rms_norm_rows, rms_norm_rows_generic, (x: &[f32], y: &mut [f32], r: &mut [f32], d: usize) -> ());
    prepare::multiversion!(rms_norm_backward_rows, rms_norm_backward_rows_generic, (x: &[f32], dy: &[f32], r: &[f32], dx: &mut [f32], d: usize) -> ());
    prepare::multiversion!(softcap_in_place, softcap_in_place_generic, (z: &mut [f32], cap: f32) -> ());
    prepare::multiversion!(relu_squared, relu_squared_generic, (x: &[f32], y: &mut [f32]) -> ());
    prepare::multiversion!(rotary_rms_rows, rotary_rms_rows_generic, (x: &[f32], y: &mut [f32], r: &mut [f32], cos: &[f32], sin: &[f32], d: usize, t: usize, row0: usize) -> ());
    prepare::multiversion!(rotary_rms_backward_rows, rotary_rms_backward_rows_generic, (x: &[f32], dout: &[f32], r: &[f32], cos: &[f32], sin: &[f32], dx: &mut [f32], d: usize, t: usize, row0: usize) -> ());
    prepare::multiversion!(relu_squared_backward, relu_squared_backward_generic, (x: &[f32], dy: &[f32], dx: &mut [f32]) -> ());
    prepare::multiversion!(softmax_in_place, softmax_generic, (row: &mut [f32]) -> ());
    prepare::multiversion!(softcap_lse_row, lse_row_generic, (row: &mut [f32], cap: f32) -> f32);
    prepare::multiversion!(softcap_ce_backward_row, backward_row_generic, (row: &mut [f32], lse: f32, target: usize, cap: f32, scale: f32) -> ());

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

    /// Flattened values of a tensor, for comparisons.
    fn flat<const N: usize>(t: Tensor<N>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// `|a - b| <= tol * max|a|` elementwise, with a message naming `what`.
    fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// The gemm matmul gives Burn's product and Burn's gradients for both operands, for
    /// contiguous, transposed (strided) and narrowed inputs, large enough to take the threaded
    /// path, and without autodiff.
    #[test]
    fn matmul_matches_burn_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let r = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x0, wt0, g) = (r([300, 97]), r([130, 97]), r([300, 130]));
        let run = |fused: bool| {
            let (x, wt) = (x0.clone().require_grad(), wt0.clone().require_grad());
            // w through a transpose and x through a narrow: both strided views.
            let (xv, w) = (x.clone().narrow(1, 0, 90), wt.clone().transpose().narrow(0, 0, 90));
            let y = if fused {
                let y = flex::try_matmul(xv, w);
                assert!(y.is_ok(), "flex under autodiff takes the gemm path");
                y.ok().unwrap()
            } else {
                xv.matmul(w)
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap()), flat(wt.grad(&grads).unwrap())]
        };
        let (want, got) = (run(false), run(true));
        for (name, (a, b)) in ["y", "dx", "dw"].iter().zip(want.iter().zip(&got)) {
            assert_close(name, a, b, 1e-5);
        }
        let plain = Device::flex();
        let (x, w) = (Tensor::<2>::from_data(x0.to_data(), &plain), Tensor::<2>::from_data(wt0.to_data(), &plain).transpose());
        assert_close("no autodiff", &flat(x.clone().matmul(w.clone())), &flat(matmul(x, w)), 1e-5);
    }

    /// The fused rotary + RMSNorm gives the tensor formulation's output and input gradient, on
    /// a transposed (strided) input as the model's, several parallel chunks, and without
    /// autodiff.
    #[test]
    fn rotary_rms_norm_matches_reference_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(19);
        let (b, t, h, d) = (2, 150, 3, 16);
        let (cos, sin) = crate::model::rotary_tables(t, d, &device);
        let x0 = Tensor::<4>::random([b, t, h, d], Distribution::Normal(0.3, 1.5), &device);
        let g = Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
        assert!(flex::try_rotary_rms_norm(x0.clone().require_grad().swap_dims(1, 2), &cos, &sin).is_ok(), "flex under autodiff takes the fused path");
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let xt = x.clone().swap_dims(1, 2); // [B, H, T, D], strided
            let y = if fused { rotary_rms_norm(xt, &cos, &sin) } else { crate::model::rms_norm_reference(crate::model::rotary(xt, &cos, &sin)) };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap())]
        };
        let (want, got) = (run(false), run(true));
        assert_close("y", &want[0], &got[0], 1e-5);
        assert_close("dx", &want[1], &got[1], 1e-4);
        let plain = Device::flex();
        let (pc, ps) = crate::model::rotary_tables(t, d, &plain);
        let px = Tensor::<4>::from_data(x0.to_data(), &plain).swap_dims(1, 2);
        assert_close("no autodiff", &flat(crate::model::rms_norm_reference(crate::model::rotary(px.clone(), &pc, &ps))), &flat(rotary_rms_norm(px, &pc, &ps)), 1e-5);
    }

    /// The fused `relu(x)^2` gives Burn's output and input gradient (zero at negative inputs),
    /// across several parallel chunks, and without autodiff.
    #[test]
    fn relu_squared_matches_reference_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(17);
        let x0 = Tensor::<3>::random([3, 100, 700], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<3>::random([3, 100, 700], Distribution::Normal(0.0, 1.0), &device);
        assert!(flex::try_relu_squared(x0.clone().require_grad()).is_ok(), "flex under autodiff takes the fused path");
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let y = if fused { relu_squared(x.clone()) } else { relu_squared_reference(x.clone()) };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap())]
        };
        let (want, got) = (run(false), run(true));
        assert_close("y", &want[0], &got[0], 1e-6);
        assert_close("dx", &want[1], &got[1], 1e-6);
        let plain = Tensor::<3>::from_data(x0.to_data(), &Device::flex());
        assert_close("no autodiff", &flat(relu_squared_reference(plain.clone())), &flat(relu_squared(plain)), 1e-6);
    }

    /// Tensors of another float type (the kernels are f32) go to Burn's own ops.
    #[test]
    fn non_f32_tensors_take_burns_ops() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2., 3., 4.], [2, 2]), &device).cast(burn::tensor::DType::F64);
        assert_eq!(x.dtype(), burn::tensor::DType::F64);
        assert!(flex::try_matmul(x.clone(), x.clone()).is_err());
        assert!(flex::try_rms_norm(x.clone()).is_err());
        assert_eq!(flat(matmul(x.clone(), x.clone())), vec![7., 10., 15., 22.]);
    }

    /// The fused RMSNorm gives the tensor formulation's output and input gradient, for rows of
    /// a 3-d and a 4-d tensor, and without autodiff.
    #[test]
    fn rms_norm_matches_reference_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(13);
        let x0 = Tensor::<3>::random([3, 70, 40], Distribution::Normal(0.5, 2.0), &device);
        let g = Tensor::<3>::random([3, 70, 40], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let y = if fused { rms_norm(x.clone()) } else { crate::model::rms_norm_reference(x.clone()) };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap())]
        };
        assert!(flex::try_rms_norm(x0.clone().require_grad()).is_ok(), "flex under autodiff takes the fused path");
        let (want, got) = (run(false), run(true));
        assert_close("y", &want[0], &got[0], 1e-5);
        assert_close("dx", &want[1], &got[1], 1e-4);
        let x4 = Tensor::<4>::random([2, 3, 17, 8], Distribution::Normal(0.0, 1.0), &Device::flex());
        assert_close("4-d, no autodiff", &flat(crate::model::rms_norm_reference(x4.clone())), &flat(rms_norm(x4)), 1e-5);
    }

    /// The in-place soft-cap gives `cap * tanh(z / cap)`, also for a view that does not own
    /// its whole buffer (which must be left alone).
    #[test]
    fn softcap_matches_tanh_and_leaves_shared_buffers_alone() {
        let device = Device::flex();
        let z = Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 20.0), &device);
        let want = flat(softcap_reference(z.clone(), 15.0));
        let before = flat(z.clone());
        assert_close("capped", &want, &flat(softcap(z.clone(), 15.0)), 1e-6);
        assert_eq!(before, flat(z.clone()), "a shared input is not overwritten");
        assert!(flex::try_softcap(z.clone(), 15.0).is_ok(), "flex takes the vectorised path");
        let unique = Tensor::<3>::from_data(z.to_data(), &device);
        assert_close("in place", &want, &flat(softcap(unique, 15.0)), 1e-6);
        let part = z.clone().narrow(2, 0, 100);
        assert_close("narrowed", &flat(softcap_reference(part.clone(), 15.0)), &flat(softcap(part, 15.0)), 1e-6);
        assert_eq!(before, flat(z), "the buffer under a view is not overwritten");
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
