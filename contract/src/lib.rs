//! The contract between the scorer (the harness, and the runner that reads its results) and the
//! code under research (the trainer), in three parts:
//!
//! - [`wire`]: the messages a trainer process and the harness exchange over one Unix socket,
//!   and [`shm`], the shared region that carries each evaluation position's logits. The trainer
//!   gets training batches on request and evaluation tokens one position at a time; it never
//!   gets a path to the data, a target before its logits are scored, or a way to write the
//!   score. [`channel`] is the trainer's end of the socket.
//! - [`sandbox`]: the kernel sandbox every trainer process runs in on Linux (landlock for files,
//!   network and signals; a seccomp filter for sockets, process groups and state that would
//!   outlive a process; no capabilities; death with the parent). The runner uses the same
//!   sandbox for experiment builds.
//! - [`summary`]: what the harness reports about a run, one type for the harness that writes it
//!   and the runner that reads it, and [`signature`], the scorer's HMAC on it, so that one
//!   reaching the runner by hand can be told from a forged one.
//!
//! [`budget`] is the training budget both ends read: the harness enforces it, the runner asks
//! for it. [`random`] is the kernel's generator for the harness's unpredictable choices, and
//! [`fixture`] a bigram trainer for tests. No Burn here: a fixture trainer written against this
//! crate builds in seconds, and the runner links it without Burn.

pub mod budget;
pub mod channel;
pub mod fixture;
pub mod random;
pub mod sandbox;
pub mod shm;
pub mod signature;
pub mod summary;
pub mod wire;
