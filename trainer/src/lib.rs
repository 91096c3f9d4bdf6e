//! The trainer: the GPT ([`model`]), its optimizer ([`optim`]), its hyperparameters
//! ([`hparams`], from `hparams.toml`) and the training loop ([`train`]).
//!
//! This is the one crate that experiments edit. It is built as its own executable
//! (`src/main.rs`), which the harness starts in a sandbox: [`train`] gets each step's data from
//! the harness through `ctx.data` and hands back the model, which is saved; then, for each group
//! of evaluation rows, a fresh process rebuilds it with [`load`] and answers one position of
//! every row at a time through the model's decoder (a KV cache, [`model::KvCache`]), and the
//! harness scores the logits itself. The trainer never reads the data files, sees a validation
//! target before its logits are scored, or writes the score.
//!
//! A port of the reference train.py (karpathy/autoresearch). Known differences:
//! - Precision: with the profile's `dtype = "bf16"` (CUDA) matmuls and attention run in bf16
//!   and everything else in f32, as the reference's autocast; the reference also keeps the
//!   embedding tables in bf16, here they stay f32. `f32` (CPU) runs everything in f32.
//! - Muon updates each matrix on its own instead of stacking same-shaped matrices (same math).
//! - The loss printed and checked for divergence is the mean over the micro-batches of a step
//!   (the reference uses the last micro-batch's).
//! - The value-embedding gates are Muon matrices, as in the reference (they live in the blocks).

pub mod hparams;
pub mod model;
pub mod optim;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use experiment::{Decoder, LogitsModel};
use experiment::{LoadContext, TrainContext, TrainError, TrainedModel};

use hparams::Hparams;
use model::{Gpt, GptConfig, KvCache};
use optim::{MuonAdamW, StepSchedule};

/// Trains a model until the harness says the budget is spent, and hands it back without
/// autodiff.
pub fn train(ctx: TrainContext) -> Result<TrainedModel, TrainError> {
    let TrainContext { device, run, mut data } = ctx;
    let hp = Hparams::load(&run.class, run.hparams_override.as_deref())?;
    let seq_len = run.seq_len;
    let device_batch = hp.scaled_device_batch(run.device_batch_scale);
    let accum = hp.grad_accum_steps(device_batch, seq_len)?;
    let rows_per_step = device_batch * accum;

    let config = model_config(&hp, run.vocab_size, seq_len, &run.dtype, &device);
    kernels::tune_allocator();
    let device = device.autodiff();
    device.seed(run.seed);
    let mut model = config.init(&device);
    let num_params = model.num_params();
    let flops_per_token = config.flops_per_token();
    data.describe(num_params, flops_per_token, hp.depth)?;
    let mut optim = MuonAdamW::new(&model, &hp)?;

    println!("Model config: {config:?}");
    println!("Parameters: {num_params} ({:.1}M) {:?}", num_params as f64 / 1e6, config.param_counts());
    println!("Estimated FLOPs per token: {flops_per_token:e}");
    println!("Device batch: {device_batch} x {seq_len}, gradient accumulation steps: {accum}");
    println!("Matmuls and attention in {:?}, everything else in f32", config.matmul_dtype);
    println!("Budget: {}", run.budget);

    let mut smooth_loss = 0.0;
    let mut step = 0usize;
    while let Some(batch) = data.next_step(rows_per_step)? {
        let started = Instant::now();
        let progress = batch.progress();
        let schedule = StepSchedule {
            lr_multiplier: hp.lr_multiplier(progress),
            muon_momentum: hp.muon_momentum(step),
            muon_weight_decay: hp.muon_weight_decay(progress),
        };
        let mut grads = GradientsAccumulator::new();
        let mut losses = Vec::with_capacity(accum);
        for micro in batch.micro_batches(device_batch) {
            let (inputs, targets) = (micro.inputs_tensor(&device), micro.targets_tensor(&device));
            losses.push(micro_step(&model, inputs, targets, accum, &mut grads));
        }
        model = optim.step(model, grads.grads(), schedule);
        // Reading the loss back waits for the forward/backward; the sync waits for the update.
        let loss = Tensor::cat(losses, 0).mean().into_scalar::<f32>() as f64;
        device.sync().map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
        check_loss(step, loss)?;
        data.report(loss, schedule.lr_multiplier);

        let dt = started.elapsed().as_secs_f64();
        smooth_loss = 0.9 * smooth_loss + 0.1 * loss;
        let debiased = smooth_loss / (1.0 - 0.9f64.powi(step as i32 + 1));
        let tokens = (rows_per_step * seq_len) as f64;
        print!(
            "\rstep {step:05} ({:.1}%) | loss: {debiased:.6} | lrm: {:.2} | dt: {:.0}ms | tok/sec: {} | epoch: {}    ",
            100.0 * progress,
            schedule.lr_multiplier,
            dt * 1000.0,
            thousands(if dt > 0.0 { (tokens / dt) as u64 } else { 0 }),
            batch.epoch(),
        );
        let _ = std::io::stdout().flush();
        step += 1;
    }
    println!();

    Ok(Box::new(model.valid()))
}

/// The file [`LogitsModel::save`] writes in the model folder (Burn's burnpack format).
pub const MODEL_FILE: &str = "model.bpk";

/// Rebuilds the model [`train`] saved, in an evaluating process: the same config from the same
/// hyperparameters, then the saved parameters.
pub fn load(ctx: LoadContext) -> Result<TrainedModel, TrainError> {
    let LoadContext { device, run, model_dir } = ctx;
    let hp = Hparams::load(&run.class, run.hparams_override.as_deref())?;
    let config = model_config(&hp, run.vocab_size, run.seq_len, &run.dtype, &device);
    kernels::tune_allocator();
    let path = model_dir.join(MODEL_FILE);
    let model = config.init(&device).try_load_file(&path).map_err(|e| anyhow::anyhow!("loading the saved model {}: {e:?}", path.display()))?;
    Ok(Box::new(model))
}

/// The model's shape for a run: the hyperparameters, the run's vocabulary and sequence length,
/// and the dtype its matmuls run in on `device`.
pub fn model_config(hp: &Hparams, vocab_size: usize, seq_len: usize, dtype: &str, device: &Device) -> GptConfig {
    let mut config = GptConfig::new(hp, vocab_size, seq_len);
    config.matmul_dtype = matmul_dtype(dtype, device);
    config
}

/// What matmuls and attention run in for the run's `dtype`: bf16 (autocast) where the device
/// has it, else f32. f16 would need loss scaling, which this trainer does not do.
pub fn matmul_dtype(dtype: &str, device: &Device) -> FloatDType {
    match dtype {
        "bf16" if device.supports_dtype(DType::BF16) => FloatDType::BF16,
        "f32" => FloatDType::F32,
        other => {
            println!("dtype {other} is not applied on this device: matmuls and attention run in f32");
            FloatDType::F32
        }
    }
}

/// Forward and backward on one micro-batch. The loss is divided by `accum` before the backward
/// pass, so the accumulated gradients are those of the mean loss. Returns the unscaled loss
/// `[1]`, detached from the graph (on the inner device).
pub fn micro_step(
    model: &Gpt,
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    accum: usize,
    grads: &mut GradientsAccumulator<Gpt>,
) -> Tensor<1> {
    let loss = model.loss(inputs, targets);
    let backward = loss.clone().div_scalar(accum as f64).backward();
    grads.accumulate(model, GradientsParams::from_grads(backward, model));
    loss.inner()
}

/// The reference's fast fail: a NaN loss or a loss above 100 ends the run.
pub fn check_loss(step: usize, loss: f64) -> Result<(), TrainError> {
    if loss.is_nan() || loss > 100.0 {
        return Err(TrainError::Diverged { step: step as u64, loss });
    }
    Ok(())
}

/// `1234567` -> `"1,234,567"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl LogitsModel for Gpt {
    fn logits(&self, inputs: Tensor<2, Int>) -> Tensor<3> {
        self.forward(inputs)
    }

    /// Decodes with a KV cache: each position costs one position's work.
    fn decoder(&self, _rows: usize) -> Box<dyn Decoder + '_> {
        Box::new(Cached { model: self, cache: KvCache::new(&self.config, &self.wte.val().device()) })
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(MODEL_FILE);
        self.clone().save_file(&path).map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))
    }
}

/// The model and the keys and values of the positions fed so far.
struct Cached<'a> {
    model: &'a Gpt,
    cache: KvCache,
}

impl Decoder for Cached<'_> {
    fn step(&mut self, tokens: Tensor<1, Int>) -> Tensor<2> {
        self.model.step(tokens, &mut self.cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_or_huge_loss_is_diverged() {
        assert!(check_loss(3, 5.0).is_ok());
        assert!(matches!(check_loss(3, f64::NAN), Err(TrainError::Diverged { step: 3, .. })));
        assert!(matches!(check_loss(7, 101.0), Err(TrainError::Diverged { step: 7, .. })));
        let msg = check_loss(1, 1e9).unwrap_err().to_string();
        assert!(msg.contains("FAIL"), "{msg}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    fn tiny_hparams(extra: &str) -> Hparams {
        let text = format!("depth = 2\naspect_ratio = 32\nhead_dim = 32\nwindow_pattern = \"SL\"\n{extra}");
        Hparams::load("cpu", Some(&text)).unwrap()
    }

    /// Trains a tiny model on a learnable stream (each token predicts the next of a fixed
    /// cycle) and returns (first loss, last loss).
    fn train_tiny(hp: &Hparams, steps: usize) -> (f64, f64) {
        let device = Device::flex().autodiff();
        device.seed(42);
        let (vocab, t, b) = (64, 32, 4);
        let config = GptConfig::new(hp, vocab, t);
        let mut model = config.init(&device);
        let mut optim = MuonAdamW::new(&model, hp).unwrap();
        let cycle: Vec<i64> = (0..vocab as i64).map(|i| (i * 37 + 11) % vocab as i64).collect();
        let (mut first, mut last) = (f64::NAN, f64::NAN);
        for step in 0..steps {
            let rows = |shift: usize| -> Tensor<2, Int> {
                let ids: Vec<i64> = (0..b)
                    .flat_map(|r| (0..t).map(move |i| (r * 7 + step * 3 + i + shift) % vocab))
                    .map(|k| cycle[k])
                    .collect();
                Tensor::from_data(TensorData::new(ids, [b, t]), &device)
            };
            let mut grads = GradientsAccumulator::new();
            let loss = micro_step(&model, rows(0), rows(1), 1, &mut grads).into_scalar::<f32>() as f64;
            let progress = step as f64 / steps as f64;
            let schedule = StepSchedule {
                lr_multiplier: hp.lr_multiplier(progress),
                muon_momentum: hp.muon_momentum(step),
                muon_weight_decay: hp.muon_weight_decay(progress),
            };
            model = optim.step(model, grads.grads(), schedule);
            if step == 0 {
                first = loss;
            }
            last = loss;
        }
        (first, last)
    }

    #[test]
    fn tiny_model_learns_a_cycle() {
        let hp = tiny_hparams("");
        let (first, last) = train_tiny(&hp, 30);
        eprintln!("tiny model: loss {first:.3} -> {last:.3} in 30 steps");
        assert!((first - (64f64).ln()).abs() < 0.5, "initial loss {first} should be near ln(64)");
        assert!(last < 0.5 * first, "loss did not fall enough: {first} -> {last}");
    }

    /// A tiny model with non-zero output projections, so every layer reaches the logits.
    fn tiny_model(hp: &Hparams, vocab: usize, seq_len: usize) -> Gpt {
        use burn::module::Param;
        use burn::tensor::Distribution;
        let device = Device::flex();
        device.seed(3);
        let mut model = GptConfig::new(hp, vocab, seq_len).init(&device);
        let c = model.config.n_embd;
        for blk in model.blocks.iter_mut() {
            blk.attn.c_proj = Param::from_tensor(Tensor::random([c, c], Distribution::Normal(0.0, 0.2), &device));
            blk.mlp.c_proj = Param::from_tensor(Tensor::random([4 * c, c], Distribution::Normal(0.0, 0.2), &device));
        }
        model
    }

    fn tokens(ids: &[i64], rows: usize, cols: usize) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(ids.to_vec(), [rows, cols]), &Device::flex())
    }

    /// The decoder's logits, one position of every row at a time, are the logits of the whole
    /// rows: the KV cache changes what evaluation costs, not what it scores (a windowed layer
    /// and a full one, value embeddings, past the window).
    #[test]
    fn the_cached_decoder_gives_the_logits_of_whole_rows() {
        let hp = tiny_hparams("");
        let (vocab, t, b) = (64, 12, 3);
        let model = tiny_model(&hp, vocab, t);
        assert_eq!(model.config.window_sizes(), vec![6, 12], "the first layer's window is shorter than the rows");
        let ids: Vec<i64> = (0..(b * t) as i64).map(|i| (i * 29 + 7) % vocab as i64).collect();
        let whole = model.forward(tokens(&ids, b, t));
        let mut decoder = model.decoder(b);
        for p in 0..t {
            let column: Vec<i64> = (0..b).map(|r| ids[r * t + p]).collect();
            let step = decoder.step(Tensor::from_data(TensorData::new(column, [b]), &Device::flex()));
            let want = whole.clone().slice(s![.., p..p + 1, ..]).reshape([b, vocab]);
            let diff = (step - want.clone()).abs().max().into_scalar::<f32>();
            let scale = want.abs().max().into_scalar::<f32>();
            assert!(diff <= 1e-5 * scale.max(1.0), "position {p}: |diff| {diff}");
        }
    }

    /// What `save` writes, `load` rebuilds: the same logits, from the same run information.
    #[test]
    fn a_saved_model_loads_to_the_same_logits() {
        let text = "depth = 2\naspect_ratio = 32\nhead_dim = 32\nwindow_pattern = \"SL\"\n";
        let hp = Hparams::load("cpu", Some(text)).unwrap();
        let (vocab, t) = (64, 8);
        let model = tiny_model(&hp, vocab, t);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let run = experiment::RunInfo {
            protocol: experiment::PROTOCOL_VERSION,
            task: experiment::Task::Evaluate { rows: 2 },
            device: "flex".into(),
            seed: 1,
            class: "cpu".into(),
            dtype: "f32".into(),
            seq_len: t,
            vocab_size: vocab,
            bos_id: 0,
            device_batch_scale: 1.0,
            warmup_steps: 1,
            budget: "tokens:1".into(),
            hparams_override: Some(text.into()),
            model_dir: dir.path().display().to_string(),
            shm_bytes: 0,
        };
        let loaded = load(LoadContext { device: Device::flex(), run: &run, model_dir: dir.path() }).unwrap();
        let ids: Vec<i64> = (0..16).map(|i| (i * 5 + 1) % vocab as i64).collect();
        let (a, b) = (model.forward(tokens(&ids, 2, t)), loaded.logits(tokens(&ids, 2, t)));
        assert_eq!((a - b).abs().max().into_scalar::<f32>(), 0.0);
        // A folder without a saved model is an error that names the file, not a panic.
        let empty = tempfile::tempdir().unwrap();
        let err = load(LoadContext { device: Device::flex(), run: &run, model_dir: empty.path() }).err().unwrap().to_string();
        assert!(err.contains(MODEL_FILE), "{err}");
    }

    #[test]
    fn returned_model_runs_without_autodiff() {
        let hp = tiny_hparams("");
        let device = Device::flex().autodiff();
        let model = GptConfig::new(&hp, 64, 16).init(&device).valid();
        assert!(!model.wte.val().device().is_autodiff());
        let ids = Tensor::<2, Int>::zeros([2, 16], &Device::flex());
        let boxed: Box<dyn LogitsModel> = Box::new(model);
        assert_eq!(boxed.logits(ids).dims(), [2, 16, 64]);
    }
}

