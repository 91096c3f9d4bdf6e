//! What runs inside a trainer process: the trainer's side of the contract with the harness.
//!
//! A trainer binary's `main` is `experiment::child::main(trainer::train, trainer::load)`:
//! [`child`] connects to the harness over the `contract` crate's channel and builds the device
//! ([`device`]); in the training process it calls `train` with a [`TrainContext`] and saves the
//! model it returns ([`LogitsModel::save`]); in an evaluating process it calls `load` with a
//! [`LoadContext`] and answers one position of every row at a time through the model's
//! decoder ([`logits`]). [`memory`], [`flops`] and [`fastmath`] are measurements and math both
//! sides use.
//!
//! The trainer binary links this crate and the trainer's kernels, not `prepare`: no data
//! pipeline, no parquet, no HTTP client in the code under research. The harness trusts none of
//! it and scores every answer itself.

pub mod child;
pub mod context;
pub mod cuda_runtime;
pub mod device;
pub mod fastmath;
pub mod flops;
pub mod logits;
pub mod memory;

pub use context::{Batch, LoadContext, PROTOCOL_VERSION, RunInfo, Step, Task, TrainContext, TrainError, TrainStream, TrainedModel, looks_like_out_of_memory};
pub use logits::{Decoder, LogitsModel, Recompute};
