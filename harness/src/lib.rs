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
//! Modules: [`cli`] (arguments and help), [`elf`] (what the sandbox reads of the trainer's binary and libraries), [`run`] (the flow), [`inventory`]
//! (`--list-devices`), [`summary`] (the reference block and the JSON), [`exit`] (exit codes).

pub mod cli;
pub mod elf;
pub mod evaluate;
pub mod exit;
pub mod inventory;
pub mod output;
pub mod run;
pub mod sandbox_policy;
pub mod summary;
pub mod train_phase;
pub mod trainer_process;
