//! The read-only experiment harness of autoresearch.
//!
//! It owns everything that makes the metric trustworthy: the budget clock, the prepared data,
//! the causality probe, `prepare::eval::evaluate_bpb`, and the summary. The trainer is reached
//! through one call, `trainer::train(TrainContext) -> Result<TrainedModel, TrainError>`.
//!
//! Modules: [`cli`] (arguments and help), [`device`] (run-time device choice), [`run`] (the
//! flow), [`probe`] (causality), [`flops`] (peak FLOP/s and MFU), [`inventory`] (`--list-devices`), [`memory`] (peak memory),
//! [`summary`] (the reference block and the JSON), [`exit`] (exit codes).

pub mod cli;
pub mod device;
pub mod exit;
pub mod flops;
pub mod inventory;
pub mod memory;
pub mod probe;
pub mod run;
pub mod summary;
