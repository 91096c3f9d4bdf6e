//! PyTorch's `scaled_dot_product_attention` on LibTorch tensors: FlashAttention on CUDA for
//! full causal attention, memory-efficient attention with a mask for sliding windows, and
//! PyTorch's CPU kernels on `tch-cpu`. Burn's own attention under autodiff runs its unfused
//! fallback, which at T = 2048 halves a step's rate and doubles its memory on an H200
//! (runner/benches/README.md, "GPU").
//!
//! The backward is libtorch's own: the forward records libtorch's graph of the kernel, and the
//! backward asks libtorch for the gradients of `sum(y * dy)` with respect to q, k and v, which
//! are exactly the input gradients for the output gradient `dy`.
#![allow(deprecated)] // burn-tch is deprecated in Burn 0.22, and is how this project reaches CUDA.

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
