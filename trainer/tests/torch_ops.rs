//! The fused ops on LibTorch devices against their plain tensor formulations, values and input
//! gradients under autodiff, and values without it: `rms_norm`, `rotary_rms_norm`,
//! `relu_squared`, `softcap` and `softcap_cross_entropy` (the attention has torch_attention.rs).
//! Each test also checks that the op took its LibTorch route (`kernels::libtorch::calls`).
//!
//! On libtorch's CPU by default (`.ci/run`'s second stage; `LIBTORCH_USE_PYTORCH=1` and pip's
//! torch); `TORCH_OPS_DEVICE=cuda` runs the same checks on a GPU (runner/benches/gpu-check.sh).
//! Sizes like the model's, small; f32 tolerances relative to the largest value: 1e-5 for values,
//! 1e-4 for gradients (the fused ops reduce in another order); bf16: 2e-2 against the reference
//! computed in f32 from the same bf16 inputs (one bf16 rounding is 4e-3).
#![cfg(feature = "tch")]
#![allow(deprecated)]

mod common;

use burn::prelude::*;
use burn::tensor::{DType, Distribution, FloatDType};
use kernels::libtorch::{calls, set_loss_chunk};
use kernels::{relu_squared, relu_squared_reference, rms_norm, rms_norm_reference, rotary, rotary_rms_norm, rotary_tables, softcap, softcap_cross_entropy, softcap_cross_entropy_reference, softcap_reference};

/// libtorch's CPU, or `TORCH_OPS_DEVICE` (e.g. `cuda`).
fn device() -> Device {
    let name = std::env::var("TORCH_OPS_DEVICE").unwrap_or_else(|_| "tch-cpu".into());
    let choice = experiment::device::parse_device(&name).expect("a device of this build");
    experiment::device::build_device(&choice).expect("the device")
}

use common::{assert_close, flat};

/// Runs `op` and asserts that it went through a LibTorch route.
fn fused<T>(what: &str, op: impl FnOnce() -> T) -> T {
    let before = calls();
    let y = op();
    assert!(calls() > before, "{what}: the LibTorch route was not taken");
    y
}

/// Output and input gradient of `op` at `x0` (under autodiff) for the output gradient `g`.
fn value_and_grad<const N: usize, const M: usize>(x0: &Tensor<N>, g: &Tensor<M>, op: impl FnOnce(Tensor<N>) -> Tensor<M>) -> [Vec<f32>; 2] {
    let x = x0.clone().detach().require_grad();
    let y = op(x.clone());
    let grads = (y.clone() * g.clone()).sum().backward();
    [flat(y), flat(x.grad(&grads).unwrap())]
}

#[test]
fn rms_norm_matches_the_tensor_formulation() {
    let device = device().autodiff();
    device.seed(13);
    let x0 = Tensor::<3>::random([2, 40, 64], Distribution::Normal(0.5, 2.0), &device);
    let g = Tensor::<3>::random([2, 40, 64], Distribution::Normal(0.0, 1.0), &device);
    let want = value_and_grad(&x0, &g, rms_norm_reference);
    let got = fused("rms_norm", || value_and_grad(&x0, &g, rms_norm));
    assert_close("y", &want[0], &got[0], 1e-5);
    assert_close("dx", &want[1], &got[1], 1e-4);
    // A transposed (strided) 4-d input, without autodiff.
    let x4 = Tensor::<4>::random([2, 17, 3, 8], Distribution::Normal(0.0, 1.0), &device).inner().swap_dims(1, 2);
    let got = fused("rms_norm, no autodiff", || rms_norm(x4.clone()));
    assert_close("4-d, no autodiff", &flat(rms_norm_reference(x4)), &flat(got), 1e-5);
}

#[test]
fn rotary_rms_norm_matches_the_tensor_formulation() {
    let device = device().autodiff();
    device.seed(19);
    let (b, t, h, d) = (2, 40, 3, 16);
    let (cos, sin) = rotary_tables(t, d, 10000.0, &device);
    let x0 = Tensor::<4>::random([b, t, h, d], Distribution::Normal(0.3, 1.5), &device);
    let g = Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
    // [B, H, T, D] through a transpose, as the model's (a strided input).
    let want = value_and_grad(&x0, &g, |x| rms_norm_reference(rotary(x.swap_dims(1, 2), &cos, &sin)));
    let got = fused("rotary_rms_norm", || value_and_grad(&x0, &g, |x| rotary_rms_norm(x.swap_dims(1, 2), &cos, &sin)));
    assert_close("y", &want[0], &got[0], 1e-5);
    assert_close("dx", &want[1], &got[1], 1e-4);
    let (px, pc, ps) = (x0.clone().inner().swap_dims(1, 2), cos.clone().inner(), sin.clone().inner());
    let got = fused("rotary_rms_norm, no autodiff", || rotary_rms_norm(px.clone(), &pc, &ps));
    assert_close("no autodiff", &flat(rms_norm_reference(rotary(px, &pc, &ps))), &flat(got), 1e-5);
}

#[test]
fn relu_squared_matches_the_tensor_formulation() {
    let device = device().autodiff();
    device.seed(17);
    let x0 = Tensor::<3>::random([2, 40, 256], Distribution::Normal(0.0, 1.0), &device);
    let g = Tensor::<3>::random([2, 40, 256], Distribution::Normal(0.0, 1.0), &device);
    let want = value_and_grad(&x0, &g, relu_squared_reference);
    let got = fused("relu_squared", || value_and_grad(&x0, &g, relu_squared));
    assert_close("y", &want[0], &got[0], 1e-6);
    assert_close("dx", &want[1], &got[1], 1e-6);
    let plain = x0.inner();
    let got = fused("relu_squared, no autodiff", || relu_squared(plain.clone()));
    assert_close("no autodiff", &flat(relu_squared_reference(plain)), &flat(got), 1e-6);
}

#[test]
fn softcap_matches_tanh_and_leaves_shared_buffers_alone() {
    let device = device().autodiff();
    device.seed(23);
    let z0 = Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 20.0), &device);
    let g = Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 1.0), &device);
    let want = value_and_grad(&z0, &g, |z| softcap_reference(z, 15.0));
    let got = fused("softcap", || value_and_grad(&z0, &g, |z| softcap(z, 15.0)));
    assert_close("y", &want[0], &got[0], 1e-6);
    assert_close("dz", &want[1], &got[1], 1e-5);
    // Without autodiff: in place on a buffer Burn owns alone, never on a shared one.
    let z = z0.inner();
    let before = flat(z.clone());
    let got = fused("softcap, shared", || softcap(z.clone(), 15.0));
    assert_close("shared", &want[0], &flat(got), 1e-6);
    assert_eq!(before, flat(z.clone()), "a shared input is not overwritten");
    let unique = Tensor::<3>::from_data(z.to_data(), &z.device());
    assert_close("in place", &want[0], &flat(fused("softcap, unique", || softcap(unique, 15.0))), 1e-6);
    let part = z.clone().narrow(2, 0, 100);
    assert_close("narrowed", &flat(softcap_reference(part.clone(), 15.0)), &flat(softcap(part, 15.0)), 1e-6);
    assert_eq!(before, flat(z), "the buffer under a view is not overwritten");
}

/// Loss and gradients of a weight upstream of the logits, with an upstream gradient other than
/// one (`loss * 3`), over several chunks of rows (the last one partial) and over one.
#[test]
fn softcap_cross_entropy_matches_the_tensor_formulation() {
    let device = device().autodiff();
    device.seed(3);
    let (n, c, v) = (50, 16, 300);
    let h = Tensor::<2>::random([n, c], Distribution::Normal(0.0, 1.0), &device);
    let w0 = Tensor::<2>::random([c, v], Distribution::Normal(0.0, 3.0), &device);
    let ids: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % v as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
    let run = |kernel: bool| {
        let w = w0.clone().detach().require_grad();
        let z = h.clone().matmul(w.clone());
        let loss = if kernel { softcap_cross_entropy(z, targets.clone(), 15.0) } else { softcap_cross_entropy_reference(z, targets.clone(), 15.0) };
        let grads = loss.clone().mul_scalar(3.0).backward();
        (loss.into_scalar::<f32>(), flat(w.grad(&grads).unwrap()))
    };
    let (loss_ref, grad_ref) = run(false);
    for chunk in [Some(8 * v), Some(7 * v + 1), None] {
        set_loss_chunk(chunk);
        let (loss, grad) = fused("softcap_cross_entropy", || run(true));
        assert!((loss_ref - loss).abs() <= 1e-5 * loss_ref.abs(), "chunk {chunk:?}: {loss_ref} vs {loss}");
        assert_close(&format!("dw, chunk {chunk:?}"), &grad_ref, &grad, 1e-4);
    }
    set_loss_chunk(Some(9 * v));
    let (z, t) = (h.inner().matmul(w0.inner()), targets.inner());
    let want = softcap_cross_entropy_reference(z.clone(), t.clone(), 15.0).into_scalar::<f32>();
    let got = fused("softcap_cross_entropy, no autodiff", || softcap_cross_entropy(z, t, 15.0)).into_scalar::<f32>();
    assert!((want - got).abs() <= 1e-5 * want.abs(), "no autodiff: {want} vs {got}");
    set_loss_chunk(None);
}

/// bf16 inputs, as the model's under autocast: the QK-norm's (rotary in bf16, as the reference,
/// the norm in f32 and rounded once) and the loss of bf16 logits (upcast a chunk at a time),
/// against the reference on the same values in f32; gradients come back in bf16.
#[test]
fn bf16_inputs_match_the_f32_formulation() {
    let device = device().autodiff();
    device.seed(29);
    let (b, t, h, d) = (2, 40, 3, 16);
    let bf16 = |x: Tensor<4>| x.cast(FloatDType::BF16);
    let (cos, sin) = rotary_tables(t, d, 10000.0, &device);
    let x0 = bf16(Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.3, 1.5), &device));
    let g = Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
    let x = x0.clone().detach().require_grad();
    let y = fused("rotary_rms_norm, bf16", || rotary_rms_norm(x.clone(), &bf16(cos.clone()), &bf16(sin.clone())));
    assert_eq!(y.dtype(), DType::BF16);
    let grads = (y.clone().cast(FloatDType::F32) * g.clone()).sum().backward();
    let dx = x.grad(&grads).unwrap();
    assert_eq!(dx.dtype(), DType::BF16, "the gradient in the input's dtype");
    let f32_of = |x: Tensor<4>| x.cast(FloatDType::F32);
    let want = value_and_grad(&f32_of(x0.clone()), &g, |x| rms_norm_reference(rotary(x, &f32_of(bf16(cos.clone())), &f32_of(bf16(sin.clone())))));
    assert_close("y", &want[0], &flat(y), 2e-2);
    assert_close("dx", &want[1], &flat(dx), 2e-2);

    let (n, v) = (24, 300);
    let z0 = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 20.0), &device).cast(FloatDType::BF16);
    let ids: Vec<i64> = (0..n as i64).map(|i| (i * 31) % v as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
    set_loss_chunk(Some(5 * v));
    let z = z0.clone().detach().require_grad();
    let loss = fused("softcap_cross_entropy, bf16", || softcap_cross_entropy(z.clone(), targets.clone(), 15.0));
    set_loss_chunk(None);
    assert_eq!(loss.dtype(), DType::F32, "the loss in f32");
    let dz = z.grad(&loss.clone().backward()).unwrap();
    assert_eq!(dz.dtype(), DType::BF16, "the gradient in the logits' dtype");
    let zf = z0.cast(FloatDType::F32).detach().require_grad();
    let loss_ref = softcap_cross_entropy_reference(zf.clone(), targets, 15.0);
    let dz_ref = zf.grad(&loss_ref.clone().backward()).unwrap();
    let (a, b) = (loss_ref.into_scalar::<f32>(), loss.into_scalar::<f32>());
    assert!((a - b).abs() <= 1e-5 * a.abs(), "bf16 logits: {a} vs {b}");
    assert_close("dz", &flat(dz_ref), &flat(dz), 1e-2);
}
