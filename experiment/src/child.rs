//! The trainer binary's side of the harness protocol, for Burn models. A trainer's `main` is
//!
//! ```ignore
//! fn main() {
//!     experiment::child::main(trainer::train, trainer::load)
//! }
//! ```
//!
//! which connects to the harness, builds the device it names and does the process's task: in
//! the training process, calls `train`, saves the model it returns into the folder the harness
//! named and reports how training ended; in an evaluating process, calls `load` on that folder
//! and answers each position of its group of rows with the model's decoder (see `contract::wire`
//! for the conversation). It is read-only code, but it runs inside the trainer's process and
//! sandbox: the harness trusts none of it and scores every answer itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use burn::prelude::*;
use contract::channel::Channel;
use contract::wire::{Done, Failure, FailureKind, Task, WireError};

use crate::context::{LoadContext, TrainContext, TrainError, TrainStream, TrainedModel, looks_like_out_of_memory};
use crate::device::{build_device, parse_device};
use crate::logits::LogitsModel;

/// Exit code of a trainer that failed (the harness reads the reason from the channel).
const FAILED: i32 = 1;
/// Exit code of a trainer that was not started by a harness, or lost it.
const NO_HARNESS: i32 = 2;

/// Runs a trainer process under the harness and exits.
pub fn main(
    train: impl FnOnce(TrainContext) -> Result<TrainedModel, TrainError>,
    load: impl FnOnce(LoadContext) -> Result<TrainedModel, TrainError>,
) -> ! {
    let mut channel = match Channel::from_harness() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trainer: {e}");
            std::process::exit(NO_HARNESS);
        }
    };
    let code = match serve(&mut channel, train, load) {
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
        TrainError::Other(inner) => from_error(inner),
    }
}

fn from_error(e: &anyhow::Error) -> Failure {
    let text = format!("{e:#}");
    let kind = if looks_like_out_of_memory(&text) { FailureKind::OutOfMemory } else { FailureKind::Error };
    failure(kind, text)
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

fn serve(
    channel: &mut Channel,
    train: impl FnOnce(TrainContext) -> Result<TrainedModel, TrainError>,
    load: impl FnOnce(LoadContext) -> Result<TrainedModel, TrainError>,
) -> Result<(), Failure> {
    let run = channel.hello().clone();
    let choice = parse_device(&run.device).map_err(|e| failure(FailureKind::Error, e.to_string()))?;
    let device = build_device(&choice).map_err(|e| failure(FailureKind::Error, e.to_string()))?;
    device.seed(run.seed);
    let model_dir = Path::new(&run.model_dir);
    match run.task {
        Task::Train => {
            let trained = catch_unwind(AssertUnwindSafe(|| train(TrainContext { device: device.clone(), run: &run, data: TrainStream::new(channel) })));
            let model = match trained {
                Ok(Ok(model)) => model,
                Ok(Err(e)) => return Err(from_train_error(&e)),
                Err(p) => return Err(from_panic("training", p.as_ref())),
            };
            match catch_unwind(AssertUnwindSafe(|| model.save(model_dir))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(from_error(&e.context(format!("saving the model into {}", model_dir.display())))),
                Err(p) => return Err(from_panic("saving the model", p.as_ref())),
            }
            channel.training_done(Done { device_memory_mb: crate::memory::device_pool_mb(&device) }).map_err(from_wire)
        }
        Task::Evaluate { rows } => {
            let loaded = catch_unwind(AssertUnwindSafe(|| load(LoadContext { device: device.clone(), run: &run, model_dir })));
            let model = match loaded {
                Ok(Ok(model)) => model,
                Ok(Err(e)) => return Err(from_train_error(&e)),
                Err(p) => return Err(from_panic("loading the model", p.as_ref())),
            };
            channel.ready().map_err(from_wire)?;
            catch_unwind(AssertUnwindSafe(|| answer_positions(channel, model.as_ref(), rows, &device)))
                .unwrap_or_else(|p| Err(from_panic("evaluation", p.as_ref())))
        }
    }
}

/// Answers each position of the group with the decoder's logits until the harness says `Quit`.
fn answer_positions(channel: &mut Channel, model: &dyn LogitsModel, rows: usize, device: &Device) -> Result<(), Failure> {
    let mut decoder = model.decoder(rows);
    while let Some(tokens) = channel.next_tokens().map_err(from_wire)? {
        if tokens.len() != rows {
            return Err(failure(FailureKind::Error, format!("the harness sent {} tokens for a group of {rows} rows", tokens.len())));
        }
        let ids: Vec<i64> = tokens.iter().map(|&id| id as i64).collect();
        let logits = decoder.step(Tensor::<1, Int>::from_data(TensorData::new(ids, [rows]), device));
        let [b, _] = logits.dims();
        if b != rows {
            return Err(failure(FailureKind::Error, format!("the decoder returned logits for {b} rows, the group has {rows}")));
        }
        answer(channel, logits)?;
    }
    Ok(())
}

/// Writes the logits into the shared region: on flex straight from the tensor's memory,
/// elsewhere through the host.
fn answer(channel: &mut Channel, logits: Tensor<2>) -> Result<(), Failure> {
    #[cfg(feature = "flex")]
    if let Ok(p) = logits.clone().try_into_primitive::<burn::backend::Flex>() {
        if p.dtype() == burn::tensor::DType::F32 {
            let p = if p.as_slice::<f32>().is_some() { p } else { p.to_contiguous() };
            let values = p.as_slice::<f32>().expect("contiguous after to_contiguous");
            return channel.answer(values).map_err(from_wire);
        }
    }
    let values = logits.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| failure(FailureKind::Error, format!("cannot read logits back: {e:?}")))?;
    channel.answer(&values).map_err(from_wire)
}
