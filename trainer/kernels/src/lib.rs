//! The trainer's ops, each fused where a backend allows it, with its plain tensor formulation
//! beside it: [`matmul`], [`causal_attention`], [`softcap_cross_entropy`], [`rms_norm`],
//! [`rotary_rms_norm`], [`relu_squared`] and, for inference, [`softcap`] and decoding's
//! [`attention_step`].
//!
//! Why a crate of its own: none of this is a research decision (unsafe `gemm`, SIMD, Burn's
//! autodiff `Backward` plumbing), so it is kept out of the way of an agent editing the trainer,
//! the way the reference's train.py takes its attention kernel from a library. It is read-only
//! for experiments (outside the guard's scope) and compiles once per run, not per experiment.
//! An experiment that wants different math writes it with tensor ops in the model; an op here
//! computes exactly its `_reference` formulation, which every test checks, gradients included.
//!
//! Where each op runs fused:
//! - on `flex` (`flex.rs`, `simd.rs`): every op, under autodiff (and the matmul, RMSNorm,
//!   rotary and soft-cap without it too), f32 only;
//! - on LibTorch (`torch.rs`, feature `tch`), with and without autodiff, each op one Burn op
//!   computed by libtorch's kernels with libtorch's own backward (its autograd of the op):
//!   the attention through PyTorch's `scaled_dot_product_attention` (FlashAttention on CUDA);
//!   [`rms_norm`] through `torch.rms_norm` (`_fused_rms_norm` on CUDA); [`rotary_rms_norm`] as
//!   three kernels for the rotation then `torch.rms_norm`; [`relu_squared`]; [`softcap`] (in
//!   place without autodiff); [`softcap_cross_entropy`] over chunks of rows through
//!   `cross_entropy_loss`, its gradient computed in the forward a chunk at a time, so the f32
//!   logits never exist whole beyond the caller's. f32, bf16 and f16; RMSNorm computes in f32
//!   for bf16 and f16 (as `F.rms_norm`), where the reference rounds after each op;
//! - everywhere else, and for tensors of another dtype: the `_reference` formulation.
//!
//! [`set_enabled`] switches every fused path off at once (benchmarks compare the two).

mod activation;
mod attention;
mod cross_entropy;
mod matmul;
mod norm;
mod rotary;

#[cfg(feature = "flex")]
mod flex;
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
mod simd;
#[cfg(feature = "tch")]
mod torch;

/// LibTorch routes' diagnostics and knobs, for tests and benchmarks.
#[cfg(feature = "tch")]
pub mod libtorch {
    /// How many ops this thread has run through a LibTorch route (the tests check that an op
    /// took its route rather than the reference).
    pub fn calls() -> usize {
        crate::torch::calls()
    }

    /// Logit elements per chunk of [`crate::softcap_cross_entropy`] on LibTorch, on this thread
    /// (default 2^25); `None` restores the default. Tests make it small to cover several chunks.
    pub fn set_loss_chunk(elements: Option<usize>) {
        crate::torch::set_loss_chunk(elements)
    }
}

pub use activation::{relu_squared, relu_squared_reference, softcap, softcap_reference};
pub use attention::{attention_step, attention_step_reference, causal_attention, causal_attention_reference, window_mask};
pub use cross_entropy::{cross_entropy, softcap_cross_entropy, softcap_cross_entropy_reference};
pub use matmul::matmul;
pub use norm::{rms_norm, rms_norm_reference};
pub use rotary::{rotary, rotary_rms_norm, rotary_tables};

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels off (every backend then runs the tensor formulation) or back on;
/// for benchmarks that compare the two.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the fused paths are on.
fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Keeps freed memory in the process instead of handing it back to the OS after every tensor.
///
/// A training step allocates and frees hundreds of MB of fresh tensors (flex and ndarray
/// allocate every op's output); with glibc's defaults the large ones are mmap'ed and unmapped
/// each time and the heap top is trimmed, so every step page-faults its memory in again (17% of
/// a flex step in the kernel at d256). This serves allocations up to 32 MB from the heap and
/// keeps up to 1 GB of free heap. Process-wide; a no-op off glibc Linux.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 128 << 20);
    }
}

/// Whether `t` lives on flex (with or without autodiff), where the kernels of this file run.
pub fn is_flex(t: &Tensor<2>) -> bool {
    #[cfg(feature = "flex")]
    {
        use burn::backend::{Autodiff, Flex};
        t.clone().try_into_primitive::<Flex>().is_ok() || t.clone().try_into_primitive::<Autodiff<Flex>>().is_ok()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = t;
        false
    }
}

/// Test helpers shared by the ops' tests.
#[cfg(test)]
mod test_util {
    use burn::prelude::*;

    /// Flattened values of a tensor, for comparisons.
    pub fn flat<const N: usize>(t: Tensor<N>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// `|a - b| <= tol * max|a|` elementwise, with a message naming `what`.
    pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
        }
    }
}
