//! The scorer's side of the data: read-only, and never linked into the trainer binary.
//!
//! Sources ([`source`], [`download`]) feed a byte-level BPE [`tokenizer`]; every shard is
//! tokenized once into a checksummed [`token_file`]; [`data::PreparedData`] opens the result;
//! [`loader`] packs rows; [`eval`] is the one definition of val_bpb. [`pipeline`] runs a whole
//! preparation (the `prepare` binary). [`clock`] is the harness's budget clock, [`profile`] the
//! platform profiles, [`held_out`] the split that no keep decision sees.
//!
//! The trainer's side of the boundary is the `experiment` crate (what runs inside a trainer
//! process), and the protocol and the sandbox between the two are the `contract` crate.

pub mod clock;
pub mod constants;
pub mod data;
pub mod download;
pub mod eval;
pub mod fixtures;
pub mod held_out;
pub mod loader;
pub mod pipeline;
pub mod profile;
pub mod progress;
pub mod source;
pub mod token_file;
pub mod tokenizer;
