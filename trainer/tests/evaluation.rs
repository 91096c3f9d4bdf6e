//! The evaluation the harness runs, one position of every row at a time through the model's KV
//! cache, scores a trained model as a teacher-forced pass over whole rows does: the same
//! val_bpb to the printed digits, on every backend of this build (flex and ndarray always,
//! wgpu on Mesa's software adapter where it is installed, LibTorch's CPU in a `tch` build).

use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use prepare::data::PreparedData;
use experiment::LogitsModel;
use prepare::eval::{BpbSums, evaluate_bpb};
use prepare::loader::PackedLoader;
use prepare::profile::PlatformProfile;
use trainer::hparams::Hparams;
use trainer::model::{Gpt, GptConfig};
use trainer::optim::{MuonAdamW, StepSchedule};

const SEQ: usize = 64;
const HPARAMS: &str = "depth = 2\naspect_ratio = 32\nhead_dim = 32\nwindow_pattern = \"SL\"\n";

/// A tiny model trained for a few steps on the tiny cache, so every layer reaches the logits.
fn trained(data: &PreparedData, device: &Device) -> Gpt {
    let hp = Hparams::load("cpu", Some(HPARAMS)).unwrap();
    let ad = device.clone().autodiff();
    ad.seed(11);
    let mut model = GptConfig::new(&hp, data.vocab_size(), SEQ).init(&ad);
    let mut optim = MuonAdamW::new(&model, &hp).unwrap();
    let mut loader = PackedLoader::train(data, 8, SEQ, 3).unwrap();
    for step in 0..8 {
        let batch = loader.next_batch().unwrap();
        let mut grads = GradientsAccumulator::new();
        trainer::micro_step(&model, batch.inputs_tensor(&ad), batch.targets_tensor(&ad), 1, &mut grads);
        let schedule = StepSchedule { lr_multiplier: 1.0, muon_momentum: hp.muon_momentum(step), muon_weight_decay: 0.0 };
        model = optim.step(model, grads.grads(), schedule);
    }
    model.valid()
}

/// val_bpb's sums from whole rows at once: the evaluation as it was before it was sealed.
fn teacher_forced(model: &Gpt, data: &PreparedData, profile: &PlatformProfile, device: &Device) -> BpbSums {
    let mut loader = PackedLoader::validation(data, profile.eval_batch_size, SEQ).unwrap();
    let mut sums = BpbSums::default();
    for _ in 0..profile.eval_steps() {
        let batch = loader.next_batch().unwrap();
        let logits = model.logits(batch.inputs_tensor(device));
        let [b, t, v] = logits.dims();
        let n = b * t;
        let ids: Vec<i64> = batch.targets.iter().map(|&id| id as i64).collect();
        let picked = log_softmax(logits.reshape([n, v]), 1).gather(1, Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), device));
        let lps = picked.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        for (&target, lp) in batch.targets.iter().zip(lps) {
            sums.add(target, lp, data.token_bytes()).unwrap();
        }
    }
    sums
}

fn same_score(device_name: &str) {
    let device = experiment::device::build_device(&experiment::device::parse_device(device_name).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    prepare::fixtures::prepare_tiny_cache(dir.path()).unwrap();
    let data = PreparedData::open(dir.path()).unwrap();
    let model = trained(&data, &device);
    let profile = PlatformProfile { seq_len: SEQ, eval_batch_size: 8, eval_tokens: SEQ * 8 * 3, ..PlatformProfile::default() };
    let decoded = evaluate_bpb(&model, &data, &profile, &device).unwrap();
    let whole = teacher_forced(&model, &data, &profile, &device);
    assert_eq!((decoded.tokens, decoded.bytes), (whole.tokens, whole.bytes), "{device_name}: the same targets");
    eprintln!("{device_name}: val_bpb {:.9} one position at a time, {:.9} whole rows", decoded.bpb(), whole.bpb());
    assert!(whole.bpb() > 0.0 && whole.bpb() < 20.0, "{device_name}: {}", whole.bpb());
    assert_eq!(format!("{:.6}", decoded.bpb()), format!("{:.6}", whole.bpb()), "{device_name}: the printed val_bpb");
    assert!((decoded.bpb() - whole.bpb()).abs() <= 1e-6 * whole.bpb(), "{device_name}: {} vs {}", decoded.bpb(), whole.bpb());
}

#[cfg(feature = "flex")]
#[test]
fn flex_scores_the_same_one_position_at_a_time() {
    same_score("flex");
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_scores_the_same_one_position_at_a_time() {
    same_score("ndarray");
}

/// On Mesa's software Vulkan adapter (lavapipe), where CI installs it.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_scores_the_same_one_position_at_a_time() {
    let installed = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .any(|e| e.map(|e| e.path().extension().is_some_and(|x| x == "json")).unwrap_or(false));
    if !installed {
        assert!(std::env::var_os("CI").is_none(), "CI must install mesa-vulkan-drivers so that wgpu has a software adapter");
        eprintln!("no Vulkan driver: install mesa-vulkan-drivers to run the wgpu check");
        return;
    }
    same_score("wgpu-cpu");
}

/// LibTorch's CPU, in a `tch` build (`.ci/run`'s second stage).
#[cfg(feature = "tch")]
#[test]
fn tch_cpu_scores_the_same_one_position_at_a_time() {
    same_score("tch-cpu");
}
