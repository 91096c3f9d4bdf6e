//! The contract between the read-only harness and the editable trainer.
//!
//! The harness builds a [`TrainContext`], calls `trainer::train`, and gets back a
//! [`TrainedModel`]. It then scores the model itself with [`crate::eval::evaluate_bpb`].

use burn::prelude::Device;

use crate::clock::TrainingClock;
use crate::data::PreparedData;
use crate::eval::LogitsModel;
use crate::profile::PlatformProfile;

/// Everything a training run is given.
pub struct TrainContext<'a> {
    /// The execution device, without autodiff; the trainer wraps it with `.autodiff()`.
    pub device: Device,
    /// Tokenizer and token files.
    pub data: &'a PreparedData,
    /// The platform profile (sequence length, batch scale, dtype, warm-up steps...).
    pub profile: &'a PlatformProfile,
    /// The harness's clock: report every step to it, stop when it says so.
    pub clock: &'a mut TrainingClock,
    /// Seed for initialisation and data order.
    pub seed: u64,
    /// TOML text that overrides the trainer's compiled-in hyperparameters (tests, smoke runs).
    pub hparams_override: Option<String>,
}

/// What a training run hands back.
pub struct TrainedModel {
    /// The trained model, behind the logits-only view that evaluation uses.
    pub model: Box<dyn LogitsModel>,
    /// Parameters of the model.
    pub num_params: usize,
    /// Training FLOPs per token (the reference's formula: 6 x non-embedding params + attention).
    pub flops_per_token: f64,
    /// Number of transformer layers.
    pub depth: usize,
}

/// Why training did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss went NaN or above 100: the reference prints `FAIL` and exits 1.
    #[error("FAIL: loss diverged at step {step} (loss {loss})")]
    Diverged { step: u64, loss: f64 },
    /// The device ran out of memory; the runner retries with half the device batch.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}
