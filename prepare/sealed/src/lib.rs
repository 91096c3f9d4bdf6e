//! The sealed boundary between the scorer (the harness) and the code under research (the
//! trainer), in two parts:
//!
//! - [`wire`]: the messages the two processes exchange over one Unix socket, and [`shm`], the
//!   shared region that carries each evaluation position's logits. The trainer gets training
//!   batches on request and evaluation tokens one position at a time; it never gets a path to
//!   the data, a target before its logits are scored, or a way to write the score.
//! - [`sandbox`]: the kernel sandbox the trainer runs in on Linux (landlock for files, network
//!   and signals; a seccomp filter for sockets and process groups; no capabilities; death with
//!   the parent). The runner uses the same sandbox for experiment builds.
//!
//! [`budget`] is the training budget both ends read: the harness enforces it, the runner asks
//! for it. [`signature`] signs the scorer's summaries, so that one reaching the runner by hand
//! can be told from a forged one. [`child`] is the trainer's end of the socket. No Burn here: a
//! fixture trainer written against this crate builds in seconds, and the runner links it
//! without Burn.

pub mod budget;
pub mod child;
pub mod fixture;
pub mod random;
pub mod sandbox;
pub mod shm;
pub mod signature;
pub mod wire;
