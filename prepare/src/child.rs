//! The trainer binary's side of the harness protocol, for Burn models. A trainer's `main` is
//!
//! ```ignore
//! fn main() {
//!     prepare::child::main(trainer::train)
//! }
//! ```
//!
//! which connects to the harness, builds the device it names, calls `train`, reports how
//! training ended, and then answers every evaluation batch with the model's logits (see
//! `sealed::wire` for the conversation). It is read-only code, but it runs inside the
//! trainer's process and sandbox: the harness trusts none of it and checks every answer.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::prelude::*;
use sealed::child::{Channel, EvalRequest};
use sealed::wire::{Done, EvalBatch, EvalMode, Failure, FailureKind, Position, WireError};

use crate::device::{build_device, parse_device};
use crate::eval::LogitsModel;
use crate::experiment::{TrainContext, TrainError, TrainStream, TrainedModel, looks_like_out_of_memory};

/// Exit code of a trainer that failed (the harness reads the reason from the channel).
const FAILED: i32 = 1;
/// Exit code of a trainer that was not started by a harness, or lost it.
const NO_HARNESS: i32 = 2;

/// Runs a trainer under the harness and exits.
pub fn main(train: impl FnOnce(TrainContext) -> Result<TrainedModel, TrainError>) -> ! {
    let mut channel = match Channel::from_harness() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trainer: {e}");
            std::process::exit(NO_HARNESS);
        }
    };
    let code = match serve(&mut channel, train) {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("trainer: {}", failure.message);
            channel.fail(failure);
            FAILED
        }
    };
    std::process::exit(code)
}

fn failure(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure { kind, message: message.into(), step: None, loss: None }
}

fn from_wire(e: WireError) -> Failure {
    failure(FailureKind::Error, format!("the harness channel failed: {e}"))
}

fn from_train_error(e: &TrainError) -> Failure {
    match e {
        TrainError::Diverged { step, loss } => Failure { kind: FailureKind::Diverged, message: e.to_string(), step: Some(*step), loss: Some(*loss) },
        TrainError::OutOfMemory(_) => failure(FailureKind::OutOfMemory, e.to_string()),
        TrainError::Other(inner) => {
            let text = format!("{inner:#}");
            let kind = if looks_like_out_of_memory(&text) { FailureKind::OutOfMemory } else { FailureKind::Error };
            failure(kind, text)
        }
    }
}

fn from_panic(stage: &str, payload: &(dyn std::any::Any + Send)) -> Failure {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    let kind = if looks_like_out_of_memory(&text) { FailureKind::OutOfMemory } else { FailureKind::Error };
    failure(kind, format!("{stage} panicked: {text}"))
}

fn serve(channel: &mut Channel, train: impl FnOnce(TrainContext) -> Result<TrainedModel, TrainError>) -> Result<(), Failure> {
    let run = channel.hello().clone();
    let choice = parse_device(&run.device).map_err(|e| failure(FailureKind::Error, e.to_string()))?;
    let device = build_device(&choice).map_err(|e| failure(FailureKind::Error, e.to_string()))?;
    device.seed(run.seed);
    let trained = catch_unwind(AssertUnwindSafe(|| {
        train(TrainContext { device: device.clone(), run: &run, data: TrainStream::new(channel) })
    }));
    let model = match trained {
        Ok(Ok(model)) => model,
        Ok(Err(e)) => return Err(from_train_error(&e)),
        Err(p) => return Err(from_panic("training", p.as_ref())),
    };
    channel.training_done(Done { device_memory_mb: crate::memory::device_pool_mb(&device) }).map_err(from_wire)?;
    catch_unwind(AssertUnwindSafe(|| answer_evaluation(channel, model.as_ref(), run.eval_mode, &device)))
        .unwrap_or_else(|p| Err(from_panic("evaluation", p.as_ref())))
}

/// Answers evaluation batches until the harness says `Quit`.
fn answer_evaluation(channel: &mut Channel, model: &dyn LogitsModel, mode: EvalMode, device: &Device) -> Result<(), Failure> {
    // The last batch's logits, kept for the harness's `Reveal` (summary mode).
    let mut last: Option<Tensor<3>> = None;
    loop {
        match channel.next_eval().map_err(from_wire)? {
            EvalRequest::Quit => return Ok(()),
            EvalRequest::Batch(batch) => {
                let logits = model.logits(ids_tensor(&batch, device));
                let [b, t, _] = logits.dims();
                if [b, t] != [batch.rows, batch.seq_len] {
                    return Err(failure(FailureKind::Error, format!("the model returned logits for {b}x{t} positions, the batch is {}x{}", batch.rows, batch.seq_len)));
                }
                match mode {
                    EvalMode::Full => answer_full(channel, logits)?,
                    EvalMode::Summary => {
                        let (lse, next, final_logits) = summarize(logits.clone(), &batch, device);
                        channel.answer_summary(host(lse)?, host(next)?, host(final_logits)?).map_err(from_wire)?;
                        last = Some(logits);
                    }
                }
            }
            EvalRequest::Reveal(positions) => {
                let logits = last.as_ref().ok_or_else(|| failure(FailureKind::Error, "Reveal before any summary answer"))?;
                channel.send_vectors(host(reveal(logits.clone(), &positions, device)?)?).map_err(from_wire)?;
            }
        }
    }
}

/// Writes every logit into the shared region: on flex straight from the tensor's memory (one
/// copy of 128 MiB a batch at the cpu profile instead of three), elsewhere through the host.
fn answer_full(channel: &mut Channel, logits: Tensor<3>) -> Result<(), Failure> {
    #[cfg(feature = "flex")]
    if let Ok(p) = logits.clone().try_into_primitive::<burn::backend::Flex>() {
        if p.dtype() == burn::tensor::DType::F32 {
            let p = if p.as_slice::<f32>().is_some() { p } else { p.to_contiguous() };
            let values = p.as_slice::<f32>().expect("contiguous after to_contiguous");
            return channel.answer_full(values).map_err(from_wire);
        }
    }
    channel.answer_full(&host(logits)?).map_err(from_wire)
}

fn ids_tensor(batch: &EvalBatch, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = batch.inputs.iter().map(|&id| id as i64).collect();
    Tensor::<2, Int>::from_data(TensorData::new(ids, [batch.rows, batch.seq_len]), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, Failure> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| failure(FailureKind::Error, format!("cannot read logits back: {e:?}")))
}

/// Per-position log-sum-exp `[B, T]`, the logit of the next input token `[B, T - 1]`, and the
/// last position's logits `[B, V]`, on the device.
fn summarize(logits: Tensor<3>, batch: &EvalBatch, device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let [b, t, v] = logits.dims();
    let max = logits.clone().max_dim(2);
    let lse = (logits.clone() - max.clone()).exp().sum_dim(2).log().add(max).reshape([b, t]);
    let next_ids: Vec<i64> = (0..b).flat_map(|r| (1..t).map(move |p| batch.inputs[r * t + p] as i64)).collect();
    let next_ids = Tensor::<3, Int>::from_data(TensorData::new(next_ids, [b, t - 1, 1]), device);
    let next = logits.clone().slice(s![.., 0..t - 1, ..]).gather(2, next_ids).reshape([b, t - 1]);
    let last = logits.slice(s![.., t - 1..t, ..]).reshape([b, v]);
    (lse, next, last)
}

/// The full logits at `positions`, `[n, V]`.
fn reveal(logits: Tensor<3>, positions: &[Position], device: &Device) -> Result<Tensor<2>, Failure> {
    let [b, t, v] = logits.dims();
    let mut rows = Vec::with_capacity(positions.len());
    for p in positions {
        let (r, q) = (p.row as usize, p.pos as usize);
        if r >= b || q >= t {
            return Err(failure(FailureKind::Error, format!("Reveal of row {r} position {q} outside a {b}x{t} batch")));
        }
        rows.push((r * t + q) as i64);
    }
    let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [positions.len()]), device);
    Ok(logits.reshape([b * t, v]).select(0, idx))
}
