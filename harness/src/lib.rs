//! The read-only scorer of autoresearch.
//!
//! It owns everything that makes the metric trustworthy, and treats the trainer as untrusted:
//! the trainer is another executable, started in a kernel sandbox ([`trainer_process`],
//! [`sandbox_policy`]), that gets its training data from the harness one step at a time on the
//! harness's clock ([`train_phase`], `prepare::clock`) and saves its model; a fresh process per
//! group of validation rows loads it and answers one position at a time ([`evaluate`]: no
//! target reaches a trainer before its logits are scored; val_bpb). The harness does not link
//! the trainer crate.
//!
//! Modules: [`cli`] (arguments and help), [`setup`] (the run's configuration), [`run`] (the
//! flow, phase by phase), [`spawn`] (starting trainer processes), [`sandbox_policy`] and
//! [`elf`] (what a trainer process may reach), [`trainer_process`] and [`output`] (one trainer
//! process), [`train_phase`], [`evaluate`], [`inventory`] (`--list-devices`), [`summary`]
//! (writing the summary JSON, `contract::summary::RunSummary`), [`exit`] (exit codes).

pub mod cli;
pub mod elf;
pub mod evaluate;
pub mod exit;
pub mod inventory;
pub mod output;
pub mod run;
pub mod sandbox_policy;
pub mod setup;
pub mod spawn;
pub mod summary;
pub mod train_phase;
pub mod trainer_process;
