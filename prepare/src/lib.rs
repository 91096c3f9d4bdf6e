//! Read-only data pipeline and metric for autoresearch.
//!
//! Sources ([`source`], [`download`]) feed a byte-level BPE [`tokenizer`]; every shard is
//! tokenized once into a checksummed [`token_file`]; [`data::PreparedData`] opens the result;
//! [`loader`] packs rows; [`eval::evaluate_bpb`] is the one definition of val_bpb.
//! [`pipeline`] runs a whole preparation (the `prepare` binary).
//!
//! The boundary between the harness (the scorer) and the trainer (the code under research):
//! [`experiment`] is the trainer's view of it, [`child`] the trainer binary's end of the
//! protocol, [`clock`] the harness's budget clock, [`device`] the run-time device choice; the
//! wire protocol and the sandbox are the Burn-free `sealed` crate (`prepare/sealed`).
//! [`flops`] and [`memory`] measure a run (MFU, peak memory). [`held_out`] is the split that
//! no keep decision sees.

pub mod child;
pub mod clock;
pub mod constants;
pub mod data;
pub mod device;
pub mod download;
pub mod eval;
pub mod experiment;
pub mod fastmath;
pub mod fixtures;
pub mod flops;
pub mod held_out;
pub mod loader;
pub mod memory;
pub mod pipeline;
pub mod profile;
pub mod progress;
pub mod source;
pub mod token_file;
pub mod tokenizer;
