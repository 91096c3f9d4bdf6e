//! Read-only data pipeline and metric for autoresearch.
//!
//! Sources ([`source`], [`download`]) feed a byte-level BPE [`tokenizer`]; every shard is
//! tokenized once into a checksummed [`token_file`]; [`data::PreparedData`] opens the result;
//! [`loader`] packs rows; [`eval::evaluate_bpb`] is the one definition of val_bpb.
//! [`pipeline`] runs a whole preparation (the `prepare` binary).
//! [`experiment`] is the contract between the harness and the trainer.

pub mod clock;
pub mod constants;
pub mod data;
pub mod download;
pub mod eval;
pub mod fastmath;
pub mod fixtures;
pub mod experiment;
pub mod loader;
pub mod pipeline;
pub mod profile;
pub mod source;
pub mod token_file;
pub mod tokenizer;
