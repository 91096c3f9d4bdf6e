//! The trainer on LibTorch devices, on libtorch's CPU: PyTorch's attention kernel
//! (`kernels::causal_attention`) against Burn's unfused formulation, outputs and gradients, and
//! bf16 autocast training. Built only with the `tch` feature (`.ci/run`'s second stage;
//! `LIBTORCH_USE_PYTORCH=1` and pip's torch).
#![cfg(feature = "tch")]
#![allow(deprecated)]

mod common;

use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use burn::tensor::{DType, Distribution, FloatDType};
use trainer::hparams::Hparams;
use kernels::{causal_attention, causal_attention_reference};
use trainer::model::GptConfig;
use trainer::optim::{MuonAdamW, StepSchedule};

use common::{assert_close, flat};

#[test]
fn pytorch_attention_matches_the_unfused_formulation_with_gradients() {
    let device = Device::libtorch().autodiff();
    device.seed(5);
    let (b, h, t, d) = (2, 3, 40, 8);
    let r = || Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
    let (q0, k0, v0, w) = (r(), r(), r(), r());
    for window in [None, Some(5), Some(39), Some(60)] {
        let run = |kernel: bool| {
            let (q, k, v) = (q0.clone().require_grad(), k0.clone().require_grad(), v0.clone().require_grad());
            // v through a transpose, as the model's (a non-contiguous input).
            let vt = v.clone().swap_dims(1, 2).swap_dims(1, 2);
            let y = if kernel { causal_attention(q.clone(), k.clone(), vt, 0.35, window) } else { causal_attention_reference(q.clone(), k.clone(), vt, 0.35, window) };
            let grads = (y.clone() * w.clone()).sum().backward();
            [flat(y), flat(q.grad(&grads).unwrap()), flat(k.grad(&grads).unwrap()), flat(v.grad(&grads).unwrap())]
        };
        let (want, got) = (run(false), run(true));
        for (name, (a, b)) in ["out", "dq", "dk", "dv"].iter().zip(want.iter().zip(&got)) {
            assert_close(&format!("{name}, window {window:?}"), a, b, 1e-4);
        }
    }
    // Without autodiff (evaluation) too. The reference is taken under autodiff, where Burn runs
    // its own formulation: burn-tch's attention without autodiff hands Burn's mask (true =
    // blocked) to PyTorch, for which true means "may attend".
    let want = flat(causal_attention_reference(q0.clone(), k0.clone(), v0.clone(), 0.35, Some(7)));
    let (q, k, v) = (q0.inner(), k0.inner(), v0.inner());
    assert!(!q.device().is_autodiff());
    assert_close("inference", &want, &flat(causal_attention(q, k, v, 0.35, Some(7))), 1e-4);
}

/// bf16 autocast on libtorch's CPU: matmuls and attention in bf16, parameters, logits and loss
/// in f32, and a tiny model still learns a fixed cycle.
#[test]
fn a_tiny_model_learns_under_bf16_autocast() {
    let device = Device::libtorch().autodiff();
    assert_eq!(trainer::matmul_dtype("bf16", &device), FloatDType::BF16, "libtorch's CPU has bf16");
    device.seed(42);
    let hp = Hparams::load("cpu", Some("depth = 2\naspect_ratio = 32\nhead_dim = 32\nwindow_pattern = \"SL\"")).unwrap();
    let (vocab, t, b, steps) = (64, 32, 4, 30);
    let mut config = GptConfig::new(&hp, vocab, t);
    config.matmul_dtype = FloatDType::BF16;
    let mut model = config.init(&device);
    let mut optim = MuonAdamW::new(&model, &hp).unwrap();
    let cycle: Vec<i64> = (0..vocab as i64).map(|i| (i * 37 + 11) % vocab as i64).collect();
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for step in 0..steps {
        let rows = |shift: usize| -> Tensor<2, Int> {
            let ids: Vec<i64> = (0..b).flat_map(|r| (0..t).map(move |i| (r * 7 + step * 3 + i + shift) % vocab)).map(|k| cycle[k]).collect();
            Tensor::from_data(TensorData::new(ids, [b, t]), &device)
        };
        if step == 0 {
            let logits = model.forward(rows(0));
            assert_eq!(logits.dtype(), DType::F32, "logits leave autocast in f32");
        }
        let mut grads = GradientsAccumulator::new();
        let loss = trainer::micro_step(&model, rows(0), rows(1), 1, &mut grads);
        assert_eq!(loss.dtype(), DType::F32);
        let loss = loss.into_scalar::<f32>() as f64;
        let progress = step as f64 / steps as f64;
        let schedule = StepSchedule { lr_multiplier: hp.lr_multiplier(progress), muon_momentum: hp.muon_momentum(step), muon_weight_decay: hp.muon_weight_decay(progress) };
        model = optim.step(model, grads.grads(), schedule);
        if step == 0 {
            first = loss;
        }
        last = loss;
    }
    assert_eq!(model.wte.val().dtype(), DType::F32, "parameters stay f32");
    assert_eq!(model.blocks[0].attn.c_q.val().dtype(), DType::F32, "parameters stay f32");
    assert!((first - (vocab as f64).ln()).abs() < 0.5, "initial loss {first} should be near ln({vocab})");
    assert!(last < 0.5 * first, "loss did not fall enough under bf16 autocast: {first} -> {last}");
}
