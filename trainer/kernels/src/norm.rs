//! RMSNorm without a learnable weight. On flex one row-parallel pass each way instead of ~5
//! tensor ops and their backwards.

use burn::prelude::*;

/// RMSNorm over the last dimension, without a learnable weight: `x / sqrt(mean(x^2) + eps)`
/// with eps = f32 machine epsilon (PyTorch's `F.rms_norm` default).
///
/// On flex one row-parallel pass forward and one backward, instead of the ~5 tensor ops (and
/// their backwards) of [`crate::rms_norm_reference`]; on LibTorch `torch.rms_norm` (f32 math
/// for bf16 inputs, rounded once).
pub fn rms_norm<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    #[cfg(any(feature = "flex", feature = "tch"))]
    if crate::enabled() {
        #[cfg(feature = "tch")]
        let x = match crate::torch::try_rms_norm(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        #[cfg(feature = "flex")]
        let x = match crate::flex::try_rms_norm(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        return crate::rms_norm_reference(x);
    }
    crate::rms_norm_reference(x)
}

/// RMSNorm over the last dimension, without a learnable weight (eps = f32 machine epsilon, as
/// PyTorch's `F.rms_norm` default), as tensor ops; `kernels::rms_norm` is the same math, fused
/// on flex.
pub fn rms_norm_reference<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    let mean_sq = x.clone().square().mean_dim(N - 1);
    x * mean_sq.add_scalar(f32::EPSILON).sqrt().recip()
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, flat};
    use burn::tensor::Distribution;

    /// The fused RMSNorm gives the tensor formulation's output and input gradient, for rows of
    /// a 3-d and a 4-d tensor, and without autodiff.
    #[test]
    fn rms_norm_matches_reference_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(13);
        let x0 = Tensor::<3>::random([3, 70, 40], Distribution::Normal(0.5, 2.0), &device);
        let g = Tensor::<3>::random([3, 70, 40], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let y = if fused { rms_norm(x.clone()) } else { crate::rms_norm_reference(x.clone()) };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap())]
        };
        assert!(crate::flex::try_rms_norm(x0.clone().require_grad()).is_ok(), "flex under autodiff takes the fused path");
        let (want, got) = (run(false), run(true));
        assert_close("y", &want[0], &got[0], 1e-5);
        assert_close("dx", &want[1], &got[1], 1e-4);
        let x4 = Tensor::<4>::random([2, 3, 17, 8], Distribution::Normal(0.0, 1.0), &Device::flex());
        assert_close("4-d, no autodiff", &flat(crate::rms_norm_reference(x4.clone())), &flat(rms_norm(x4)), 1e-5);
    }
}
