//! The ops on LibTorch tensors (with or without autodiff), each computed by libtorch's own
//! kernels, with libtorch's own backward: one Burn op where the `_reference` formulation is
//! several, each with its Burn-side backward.
//!
//! - [`try_attention`]: PyTorch's `scaled_dot_product_attention`: FlashAttention on CUDA for
//!   full causal attention, memory-efficient attention with a mask for sliding windows, and
//!   PyTorch's CPU kernels on `tch-cpu`. Burn's own attention under autodiff runs its unfused
//!   fallback, which at T = 2048 halves a step's rate and doubles its memory on an H200
//!   (runner/benches/README.md, "GPU").
//! - [`try_rms_norm`]: `torch.rms_norm` (the fused `_fused_rms_norm` kernel on CUDA; f32 math
//!   for bf16 inputs, as `F.rms_norm`).
//! - [`try_rotary_rms_norm`]: the rotation as `x * [cos, cos] + roll(x, D/2) * [sin, -sin]`
//!   (three kernels instead of two narrows, four products and a concatenation), then
//!   `torch.rms_norm`.
//! - [`try_relu_squared`], [`try_softcap`]: the elementwise chains, one Burn op each.
//! - [`try_softcap_cross_entropy`]: soft-cap and `cross_entropy` over chunks of rows, the
//!   gradient computed chunk by chunk in the forward (no f32 `[N, V]` tensor beyond one chunk,
//!   and none of the reference's saved `[N, V]` intermediates).
//!
//! The plumbing ([`try_op`]): under autodiff the forward runs the op's closure on leaves that
//! require grad, so libtorch records its graph; the backward asks libtorch for the gradients of
//! `sum(y * dy)` with respect to those leaves, which are exactly the input gradients for the
//! output gradient `dy`.
#![allow(deprecated)] // burn-tch is deprecated in Burn 0.22, and is how this project reaches CUDA.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::libtorch::TchTensor;
use burn::backend::{Autodiff, LibTorch};
use burn::prelude::*;
use tch::Kind;

type AdTensor<C> = burn::backend::tensor::FloatTensor<Autodiff<LibTorch, C>>;

thread_local! {
    /// LibTorch routes taken on this thread (tests check that an op took its route).
    static CALLS: Cell<usize> = const { Cell::new(0) };
    /// Logit elements per chunk of the soft-capped cross-entropy (a test makes it small).
    static LOSS_CHUNK: Cell<usize> = const { Cell::new(DEFAULT_LOSS_CHUNK) };
}

/// 2^25 f32 logits (128 MiB) a chunk: 4096 rows of an 8192 vocabulary.
const DEFAULT_LOSS_CHUNK: usize = 1 << 25;

/// How many ops this thread has run through a LibTorch route of this module.
pub fn calls() -> usize {
    CALLS.with(Cell::get)
}

/// Sets the logit elements per chunk of the soft-capped cross-entropy on this thread (at least
/// one row a chunk); `None` restores the default.
pub fn set_loss_chunk(elements: Option<usize>) {
    LOSS_CHUNK.with(|c| c.set(elements.unwrap_or(DEFAULT_LOSS_CHUNK).max(1)));
}

fn count() {
    CALLS.with(|c| c.set(c.get() + 1));
}

/// The libtorch tensor of a LibTorch float tensor, with or without autodiff (as a constant).
fn constant(t: &Tensor<4>) -> Option<tch::Tensor> {
    t.clone().inner().try_into_primitive::<LibTorch>().ok().map(|p| p.tensor)
}

/// The libtorch tensor of a LibTorch int tensor, with or without autodiff.
fn constant_int(t: &Tensor<1, Int>) -> Option<tch::Tensor> {
    t.clone().inner().try_into_primitive::<LibTorch>().ok().map(|p| p.tensor)
}

/// `Some` of every element when every one is `Ok`.
fn all<T, E, const N: usize>(xs: [Result<T, E>; N]) -> Option<[T; N]> {
    if xs.iter().any(|x| x.is_err()) {
        return None;
    }
    Some(xs.map(|x| x.ok().unwrap()))
}

/// Runs `f` as one op on `inputs` when they all are LibTorch tensors (with or without
/// autodiff; under autodiff with either checkpointing strategy), differentiable in each of
/// them through libtorch's autograd; hands them back otherwise. `f` maps the inputs' libtorch
/// tensors to the output's; constants it needs (tables, targets) it captures.
pub fn try_op<const DI: usize, const N: usize, const DO: usize>(
    inputs: [Tensor<DI>; N],
    f: impl Fn(&[tch::Tensor; N]) -> tch::Tensor,
) -> Result<Tensor<DO>, [Tensor<DI>; N]> {
    macro_rules! on_autodiff {
        ($c:ty) => {
            if let Some(xs) = all(inputs.each_ref().map(|x| x.clone().try_into_primitive::<Autodiff<LibTorch, $c>>())) {
                count();
                return Ok(Tensor::from_primitive::<Autodiff<LibTorch, $c>>(op_ad::<$c, N>(xs, &f)));
            }
        };
    }
    if inputs[0].device().gradient_checkpointing_strategy().is_some() {
        on_autodiff!(NoCheckpointing);
        on_autodiff!(BalancedCheckpointing);
        return Err(inputs);
    }
    if let Some(xs) = all(inputs.each_ref().map(|x| x.clone().try_into_primitive::<LibTorch>())) {
        count();
        let y = tch::no_grad(|| f(&xs.map(|x| x.tensor)));
        return Ok(Tensor::from_primitive::<LibTorch>(TchTensor::new(y)));
    }
    Err(inputs)
}

/// What the backward needs: the output with libtorch's graph and the graph's leaves; and the
/// Burn primitives of the inputs and the output, held so that Burn, seeing them shared, never
/// overwrites one in place while the graph (which may have saved it) lives.
struct Saved {
    y: tch::Tensor,
    leaves: Vec<tch::Tensor>,
    _pinned: Vec<TchTensor>,
}

/// Shared, since Burn clones a backward's state; `Mutex` because a `tch::Tensor` is `Send`
/// but not `Sync`.
#[derive(Clone)]
struct State(Arc<Mutex<Saved>>);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TorchOpState")
    }
}

#[derive(Debug)]
struct TorchOp<const N: usize>;

impl<const N: usize> Backward<LibTorch, N> for TorchOp<N> {
    type State = State;

    fn backward(self, ops: Ops<State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<LibTorch>(&ops.node);
        let saved = ops.state.0.lock().unwrap_or_else(|e| e.into_inner());
        let objective = (&saved.y * dy.tensor.detach()).sum(Kind::Float);
        let input_grads = tch::Tensor::run_backward(&[objective], &saved.leaves, false, false);
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<LibTorch>(parent.id, TchTensor::new(grad));
            }
        }
    }
}

/// A Burn primitive sharing `t`'s tensor and storage count.
fn pin(t: &TchTensor) -> TchTensor {
    TchTensor { tensor: t.tensor.shallow_clone(), storage: t.storage.clone() }
}

fn op_ad<C: CheckpointStrategy, const N: usize>(xs: [AdTensor<C>; N], f: &dyn Fn(&[tch::Tensor; N]) -> tch::Tensor) -> AdTensor<C> {
    let prep = TorchOp::<N>.prepare::<C>(xs.each_ref().map(|x| x.node())).compute_bound().stateful();
    let xs = xs.map(|x| x.into_primitive());
    match prep {
        OpsKind::Tracked(prep) => {
            let leaves = xs.each_ref().map(|x| x.tensor.detach().requires_grad_(true));
            let y = tch::with_grad(|| f(&leaves));
            let output = TchTensor::new(y.detach());
            let mut pinned: Vec<TchTensor> = xs.into();
            pinned.push(pin(&output));
            prep.finish(State(Arc::new(Mutex::new(Saved { y, leaves: leaves.into(), _pinned: pinned }))), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(TchTensor::new(tch::no_grad(|| f(&xs.map(|x| x.tensor))))),
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

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
    try_op([q, k, v], |[q, k, v]| sdpa(q, k, v, scale, window)).map_err(|[q, k, v]| (q, k, v))
}

/// Causal attention of `[B, H, T, D]` tensors; query i sees keys `i - window ..= i`.
fn sdpa(q: &tch::Tensor, k: &tch::Tensor, v: &tch::Tensor, scale: f64, window: Option<usize>) -> tch::Tensor {
    let t = q.size()[2];
    match window.map(|w| w as i64).filter(|&w| w < t) {
        None => tch::Tensor::scaled_dot_product_attention(q, k, v, None::<tch::Tensor>, 0.0, true, scale, false),
        Some(w) => {
            // A boolean mask is "may attend" in PyTorch; it replaces `is_causal`.
            let pos = tch::Tensor::arange(t, (Kind::Int64, q.device()));
            let behind = pos.unsqueeze(1) - pos.unsqueeze(0); // [T, T]: i - j
            let mask = behind.ge(0).logical_and(&behind.le(w));
            tch::Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, scale, false)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm, rotary + QK-norm

/// Whether a float kind is one the ops here take (the model's f32 and bf16, and f16).
fn float_kind(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::BFloat16 | Kind::Half)
}

/// `torch.rms_norm` over the last dimension with eps = f32 machine epsilon (the reference's;
/// PyTorch's default would be the input dtype's epsilon). For bf16 and f16 inputs PyTorch
/// computes in f32 and rounds the output once (the reference rounds after each tensor op).
fn rms_norm_last(x: &tch::Tensor) -> tch::Tensor {
    let d = *x.size().last().expect("a tensor with dimensions");
    x.rms_norm([d], None::<tch::Tensor>, f32::EPSILON as f64)
}

/// RMSNorm over the last dimension of a LibTorch tensor through `torch.rms_norm`.
pub fn try_rms_norm<const N: usize>(x: Tensor<N>) -> Result<Tensor<N>, Tensor<N>> {
    if N == 0 || x.dims()[N - 1] == 0 {
        return Err(x);
    }
    try_op([x], |[x]| rms_norm_last(x)).map_err(|[x]| x)
}

/// `rms_norm(rotary(x, cos, sin))` of a LibTorch tensor `x` `[B, H, T, D]`, with the tables
/// `[1, 1, T, D/2]` in `x`'s dtype (the model's): the rotation `(x1, x2) -> (x1 cos + x2 sin,
/// x2 cos - x1 sin)` as `x * [cos, cos] + roll(x, D/2) * [sin, -sin]` in `x`'s dtype (the same
/// products and sums, rounded the same way, as the reference), then [`rms_norm_last`].
pub fn try_rotary_rms_norm(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    let [_, _, t, d] = x.dims();
    if d == 0 || d % 2 != 0 || cos.dims() != [1, 1, t, d / 2] || sin.dims() != [1, 1, t, d / 2] || cos.dtype() != x.dtype() || sin.dtype() != x.dtype() {
        return Err(x);
    }
    let (Some(cos), Some(sin)) = (constant(cos), constant(sin)) else { return Err(x) };
    if !float_kind(cos.kind()) {
        return Err(x);
    }
    let half = (d / 2) as i64;
    // [1, 1, T, D] each, constants of the op (the model's tables need no gradient).
    let cc = tch::Tensor::cat(&[&cos, &cos], 3);
    let ss = tch::Tensor::cat(&[&sin, &sin.neg()], 3);
    try_op([x], move |[x]| {
        let rotated = x * &cc + x.roll([half], [3]) * &ss;
        rms_norm_last(&rotated)
    })
    .map_err(|[x]| x)
}

// ---------------------------------------------------------------------------------------------
// relu^2, soft-cap

/// `relu(x)^2` of a LibTorch tensor (its backward: libtorch's, `2 relu(x) dy`).
pub fn try_relu_squared<const N: usize>(x: Tensor<N>) -> Result<Tensor<N>, Tensor<N>> {
    try_op([x], |[x]| x.relu().square()).map_err(|[x]| x)
}

/// `cap * tanh(z / cap)` of a LibTorch tensor: without autodiff in place where Burn owns the
/// buffer alone; under autodiff one op with libtorch's backward.
pub fn try_softcap<const N: usize>(z: Tensor<N>, cap: f64) -> Result<Tensor<N>, Tensor<N>> {
    if !z.device().is_autodiff()
        && let Ok(mut p) = z.clone().try_into_primitive::<LibTorch>()
    {
        drop(z); // the primitive is then the buffer's only owner, if nothing else holds it
        count();
        let y = tch::no_grad(|| match p.mut_ops(|t| t.g_div_scalar_(cap).tanh_().g_mul_scalar_(cap)) {
            Some(y) => y,
            None => TchTensor::new((p.tensor.g_div_scalar(cap)).tanh().g_mul_scalar(cap)),
        });
        return Ok(Tensor::from_primitive::<LibTorch>(y));
    }
    try_op([z], |[z]| z.g_div_scalar(cap).tanh().g_mul_scalar(cap)).map_err(|[z]| z)
}

// ---------------------------------------------------------------------------------------------
// Soft-capped cross-entropy

/// Mean cross-entropy of the soft-capped logits `cap * tanh(z / cap)` of a LibTorch tensor `z`
/// `[N, V]` (f32, or bf16/f16 upcast to f32 a chunk at a time) against `targets` `[N]`, `[1]`
/// in f32, as the reference.
///
/// Rows go in chunks of `LOSS_CHUNK` logits: each chunk's f32 capped logits, its loss and (when
/// tracked) its gradient `(softmax(c) - onehot(t)) (1 - (c/cap)^2) / N` through libtorch's
/// autograd of `cross_entropy_loss`, written into one `[N, V]` gradient in `z`'s dtype. The
/// backward then only scales that by the upstream gradient. So no `[N, V]` f32 tensor beyond a
/// chunk exists, and nothing of the reference's graph (the capped logits, the log-softmax).
pub fn try_softcap_cross_entropy(z: Tensor<2>, targets: &Tensor<1, Int>, cap: f64) -> Result<Tensor<1>, Tensor<2>> {
    let [n, v] = z.dims();
    if n == 0 || v == 0 || targets.dims() != [n] {
        return Err(z);
    }
    let Some(targets) = constant_int(targets) else { return Err(z) };
    macro_rules! on_autodiff {
        ($c:ty) => {
            if let Ok(p) = z.clone().try_into_primitive::<Autodiff<LibTorch, $c>>() {
                if !float_kind(p.primitive().tensor.kind()) {
                    return Err(z);
                }
                drop(z);
                count();
                return Ok(Tensor::from_primitive::<Autodiff<LibTorch, $c>>(loss_ad::<$c>(p, &targets, cap)));
            }
        };
    }
    if z.device().gradient_checkpointing_strategy().is_some() {
        on_autodiff!(NoCheckpointing);
        on_autodiff!(BalancedCheckpointing);
        return Err(z);
    }
    if let Ok(p) = z.clone().try_into_primitive::<LibTorch>() {
        if !float_kind(p.tensor.kind()) {
            return Err(z);
        }
        count();
        let (loss, _) = softcap_ce_chunks(&p.tensor, &targets, cap, false);
        return Ok(Tensor::from_primitive::<LibTorch>(TchTensor::new(loss)));
    }
    Err(z)
}

/// The loss `[1]` (f32) and, with `grad`, `dloss/dz` in `z`'s dtype.
fn softcap_ce_chunks(z: &tch::Tensor, targets: &tch::Tensor, cap: f64, grad: bool) -> (tch::Tensor, Option<tch::Tensor>) {
    let (n, v) = (z.size()[0], z.size()[1]);
    let rows = (LOSS_CHUNK.with(Cell::get) as i64 / v).max(1);
    let targets = targets.to_device(z.device()).to_kind(Kind::Int64);
    let dz = grad.then(|| z.empty_like());
    let mut total = tch::Tensor::zeros([], (Kind::Float, z.device()));
    let capped_loss = |c: &tch::Tensor, t: &tch::Tensor| {
        let capped = c.g_div_scalar(cap).tanh().g_mul_scalar(cap);
        capped.cross_entropy_loss::<tch::Tensor>(t, None, tch::Reduction::Sum, -100, 0.0)
    };
    for start in (0..n).step_by(rows as usize) {
        let len = rows.min(n - start);
        let mut zc = z.narrow(0, start, len).detach().to_kind(Kind::Float);
        let tc = targets.narrow(0, start, len);
        match &dz {
            None => total += tch::no_grad(|| capped_loss(&zc, &tc)),
            Some(dz) => {
                let leaf = zc.requires_grad_(true);
                let loss = tch::with_grad(|| capped_loss(&leaf, &tc));
                let [g] = <[tch::Tensor; 1]>::try_from(tch::Tensor::run_backward(&[&loss], &[&leaf], false, false)).ok().expect("one gradient");
                tch::no_grad(|| {
                    total += loss.detach();
                    dz.narrow(0, start, len).copy_(&g.g_div_scalar(n as f64));
                });
            }
        }
    }
    (tch::no_grad(|| (total / n as f64).reshape([1])), dz)
}

#[derive(Debug)]
struct SoftcapCrossEntropy;

/// The loss's gradient with respect to `z` for an upstream gradient of 1.
#[derive(Clone)]
struct LossGrad(Arc<Mutex<Option<tch::Tensor>>>);

impl std::fmt::Debug for LossGrad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftcapCrossEntropyGrad")
    }
}

impl Backward<LibTorch, 1> for SoftcapCrossEntropy {
    type State = LossGrad;

    fn backward(self, ops: Ops<LossGrad, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<LibTorch>(&ops.node).tensor;
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let Some(mut dz) = ops.state.0.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        tch::no_grad(|| {
            let dy = dy.to_kind(Kind::Float).reshape([] as [i64; 0]);
            if dz.kind() == Kind::Float {
                let _ = dz.g_mul_(&dy);
            } else {
                // In f32 a chunk at a time, back to z's dtype.
                let (n, v) = (dz.size()[0], dz.size()[1]);
                let rows = (LOSS_CHUNK.with(Cell::get) as i64 / v).max(1);
                for start in (0..n).step_by(rows as usize) {
                    let mut part = dz.narrow(0, start, rows.min(n - start));
                    let scaled = part.to_kind(Kind::Float) * &dy;
                    let _ = part.copy_(&scaled);
                }
            }
        });
        grads.register::<LibTorch>(parent.id, TchTensor::new(dz));
    }
}

fn loss_ad<C: CheckpointStrategy>(z: AdTensor<C>, targets: &tch::Tensor, cap: f64) -> AdTensor<C> {
    let prep = SoftcapCrossEntropy.prepare::<C>([z.node()]).compute_bound().stateful();
    let z = z.into_primitive().tensor;
    match prep {
        OpsKind::Tracked(prep) => {
            let (loss, dz) = softcap_ce_chunks(&z, targets, cap, true);
            drop(z);
            prep.finish(LossGrad(Arc::new(Mutex::new(dz))), TchTensor::new(loss))
        }
        OpsKind::UnTracked(prep) => prep.finish(TchTensor::new(softcap_ce_chunks(&z, targets, cap, false).0)),
    }
}
