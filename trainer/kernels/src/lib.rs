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
//! - on LibTorch (`torch.rs`, feature `tch`): the attention, through PyTorch's
//!   `scaled_dot_product_attention` (FlashAttention on CUDA);
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
