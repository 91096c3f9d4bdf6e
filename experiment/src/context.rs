//! The contract between the trainer and the harness, seen from the trainer.
//!
//! The trainer is its own executable, started by the harness in a sandbox, once to train and
//! once for each group of evaluation rows. Its `main` is
//! `experiment::child::main(trainer::train, trainer::load)`: [`crate::child`] connects to the
//! harness and builds the device; in the training process it calls `train` with a
//! [`TrainContext`] and saves the returned model ([`crate::eval::LogitsModel::save`]); in an
//! evaluating process it calls `load` with a [`LoadContext`] and answers the harness one
//! position at a time. The trainer never sees the data files, a validation target before its
//! logits are scored, or the summary: it asks for each step's data through [`TrainStream`],
//! and the harness scores the model itself.

use std::path::Path;

use burn::prelude::*;
use contract::channel::Channel;
use contract::wire::{ModelInfo, StepReport, TrainBatch, WireError};

/// What the harness tells the trainer about the run (see its fields).
pub use contract::wire::Hello as RunInfo;
/// What a trainer process is for, and the protocol's version (both in [`RunInfo`]).
pub use contract::wire::{PROTOCOL_VERSION, Task};

use crate::logits::LogitsModel;

/// Everything a training run is given.
pub struct TrainContext<'a> {
    /// The execution device, without autodiff; the trainer wraps it with `.autodiff()`.
    pub device: Device,
    /// What the harness says about the run: sequence length, vocabulary, profile class and
    /// dtype, device batch scale, seed, hyperparameter overrides.
    pub run: &'a RunInfo,
    /// The training data, one optimizer step at a time.
    pub data: TrainStream<'a>,
}

/// Everything an evaluating process is given to rebuild the trained model.
pub struct LoadContext<'a> {
    /// The execution device, without autodiff.
    pub device: Device,
    /// The same run information the training process got (its hyperparameter overrides
    /// included), so `load` rebuilds the model `train` built.
    pub run: &'a RunInfo,
    /// The folder the training process saved the model in; read-only here.
    pub model_dir: &'a Path,
}

/// The trainer's source of training data: the harness hands out each step's rows and says when
/// the budget is spent.
pub struct TrainStream<'a> {
    channel: &'a mut Channel,
    described: bool,
    last: Option<StepReport>,
}

impl<'a> TrainStream<'a> {
    pub fn new(channel: &'a mut Channel) -> Self {
        TrainStream { channel, described: false, last: None }
    }

    /// Tells the harness about the model, once, before the first step: its FLOPs per token
    /// drive a `flops:` budget and MFU; its parameters and depth go into the summary.
    pub fn describe(&mut self, num_params: usize, flops_per_token: f64, depth: usize) -> Result<(), TrainError> {
        self.channel.send_model(ModelInfo { num_params: num_params as u64, flops_per_token, depth: depth as u64 }).map_err(wire)?;
        self.described = true;
        Ok(())
    }

    /// The next optimizer step's data, `rows` packed rows; `None` once the budget is spent.
    /// `loss` and `lr_multiplier` of the step just finished go with the request, for the log
    /// and the harness's divergence check.
    pub fn next_step(&mut self, rows: usize) -> Result<Option<Step>, TrainError> {
        if !self.described {
            return Err(TrainError::Other(anyhow::anyhow!("call TrainStream::describe before the first step")));
        }
        let report = self.last.take();
        Ok(self.channel.next_step(rows, report).map_err(wire)?.map(|batch| Step { batch }))
    }

    /// Records the loss of the step just finished (sent with the next request).
    pub fn report(&mut self, loss: f64, lr_multiplier: f64) {
        self.last = Some(StepReport { loss, lr_multiplier });
    }
}

fn wire(e: WireError) -> TrainError {
    TrainError::Other(anyhow::anyhow!("the harness channel failed: {e}"))
}

/// One batch of packed rows, on the host.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Rows in the batch.
    pub batch_size: usize,
    /// Positions per row.
    pub seq_len: usize,
    /// `row[..seq_len]` for every row, row-major, `batch_size * seq_len` ids.
    pub inputs: Vec<u32>,
    /// `row[1..]` for every row, row-major, `batch_size * seq_len` ids.
    pub targets: Vec<u32>,
    /// Completed passes over the train shards when this batch was cut (0 in the first pass).
    pub epoch: u64,
}

impl Batch {
    /// Inputs as a `[batch_size, seq_len]` int tensor on `device`.
    pub fn inputs_tensor(&self, device: &Device) -> Tensor<2, Int> {
        ids_tensor(&self.inputs, self.batch_size, self.seq_len, device)
    }

    /// Targets as a `[batch_size, seq_len]` int tensor on `device`.
    pub fn targets_tensor(&self, device: &Device) -> Tensor<2, Int> {
        ids_tensor(&self.targets, self.batch_size, self.seq_len, device)
    }
}

fn ids_tensor(ids: &[u32], rows: usize, cols: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, cols]), device)
}

/// One optimizer step's rows.
pub struct Step {
    batch: TrainBatch,
}

impl Step {
    /// Fraction of the budget spent when the step was handed out, in `[0, 1]` (0 in warm-up):
    /// drives the learning-rate schedule.
    pub fn progress(&self) -> f64 {
        self.batch.progress
    }

    /// Zero-based step number.
    pub fn index(&self) -> u64 {
        self.batch.step
    }

    /// Completed passes over the train shards.
    pub fn epoch(&self) -> u64 {
        self.batch.epoch
    }

    /// Rows in the step.
    pub fn rows(&self) -> usize {
        self.batch.rows
    }

    /// The step's rows as micro-batches of `rows` rows each (the last may be smaller).
    pub fn micro_batches(&self, rows: usize) -> Vec<Batch> {
        let rows = rows.max(1);
        (0..self.batch.rows)
            .step_by(rows)
            .map(|from| {
                let to = (from + rows).min(self.batch.rows);
                let (inputs, targets) = self.batch.inputs_and_targets(from, to);
                Batch { batch_size: to - from, seq_len: self.batch.seq_len, inputs, targets, epoch: self.batch.epoch }
            })
            .collect()
    }
}

/// What a training run hands back, and what `load` rebuilds: the trained model, behind the
/// view that evaluation uses.
pub type TrainedModel = Box<dyn LogitsModel>;

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

/// True when an error or panic message says the device or the host ran out of memory.
pub fn looks_like_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "outofmemory",
        "out_of_memory",
        "oom",
        "memory allocation",
        "allocation failed",
        "failed to allocate",
        "cannot allocate",
        "alloc failed",
        "memory exhausted",
        "insufficient memory",
        "not enough memory",
    ]
    .iter()
    .any(|needle| {
        if *needle == "oom" {
            // Whole word only: "room", "zoom" are not OOM.
            m.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == "oom")
        } else {
            m.contains(needle)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_messages_are_recognised() {
        assert!(looks_like_out_of_memory("CUDA out of memory. Tried to allocate 2 GiB"));
        assert!(looks_like_out_of_memory("OutOfMemory { size: 10 }"));
        assert!(looks_like_out_of_memory("memory allocation of 1234 bytes failed"));
        assert!(looks_like_out_of_memory("wgpu: OOM while creating buffer"));
        assert!(!looks_like_out_of_memory("index out of bounds: the len is 3"));
        assert!(!looks_like_out_of_memory("no room left in the row"));
    }

    #[test]
    fn a_step_splits_into_micro_batches_of_inputs_and_targets() {
        let step = Step {
            batch: TrainBatch { step: 0, epoch: 2, progress: 0.5, elapsed: 1.0, rows: 3, seq_len: 2, tokens: vec![1, 2, 3, 4, 5, 6, 7, 8, 9] },
        };
        let mbs = step.micro_batches(2);
        assert_eq!(mbs.len(), 2);
        assert_eq!((mbs[0].batch_size, mbs[0].inputs.clone(), mbs[0].targets.clone()), (2, vec![1, 2, 4, 5], vec![2, 3, 5, 6]));
        assert_eq!((mbs[1].batch_size, mbs[1].inputs.clone(), mbs[1].targets.clone(), mbs[1].epoch), (1, vec![7, 8], vec![8, 9], 2));
        assert_eq!((step.progress(), step.rows()), (0.5, 3));
    }
}
