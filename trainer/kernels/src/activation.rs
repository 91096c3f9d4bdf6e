//! `relu^2`, the MLP's activation (on flex one pass each way, `dx = 2 relu(x) dy`), and the
//! logit soft-cap for inference (on flex in place, row-parallel and vectorised: Burn's `tanh`
//! there is scalar libm on one core).

use burn::prelude::*;

/// `relu(x)^2`, the MLP's activation. On flex one pass forward and one backward (`dx = 2
/// relu(x) dy`) instead of two ops and their backwards, each a fresh `[B, T, 4C]` tensor; on
/// LibTorch one op, libtorch's kernels and backward.
pub fn relu_squared<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    #[cfg(any(feature = "flex", feature = "tch"))]
    if crate::enabled() {
        #[cfg(feature = "tch")]
        let x = match crate::torch::try_relu_squared(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        #[cfg(feature = "flex")]
        let x = match crate::flex::try_relu_squared(x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        return relu_squared_reference(x);
    }
    relu_squared_reference(x)
}

/// [`relu_squared`] as tensor ops.
pub fn relu_squared_reference<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    burn::tensor::activation::relu(x).square()
}

/// The logit soft-cap `cap * tanh(z / cap)`, for inference (evaluation, the causality probe).
///
/// On flex without autodiff it runs in place, row-parallel and vectorised; Burn's `tanh` there
/// is scalar libm on one core, which made evaluation most of a short CPU run's overhead. On
/// LibTorch in place where Burn owns the buffer alone (one op with libtorch's backward under
/// autodiff).
pub fn softcap<const N: usize>(z: Tensor<N>, cap: f64) -> Tensor<N> {
    #[cfg(any(feature = "flex", feature = "tch"))]
    if crate::enabled() {
        #[cfg(feature = "tch")]
        let z = match crate::torch::try_softcap(z, cap) {
            Ok(y) => return y,
            Err(z) => z,
        };
        #[cfg(feature = "flex")]
        let z = match crate::flex::try_softcap(z, cap) {
            Ok(y) => return y,
            Err(z) => z,
        };
        return softcap_reference(z, cap);
    }
    softcap_reference(z, cap)
}

/// [`softcap`] as tensor ops.
pub fn softcap_reference<const N: usize>(z: Tensor<N>, cap: f64) -> Tensor<N> {
    z.div_scalar(cap).tanh().mul_scalar(cap)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, flat};
    use burn::tensor::Distribution;

    /// The fused `relu(x)^2` gives Burn's output and input gradient (zero at negative inputs),
    /// across several parallel chunks, and without autodiff.
    #[test]
    fn relu_squared_matches_reference_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(17);
        let x0 = Tensor::<3>::random([3, 100, 700], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<3>::random([3, 100, 700], Distribution::Normal(0.0, 1.0), &device);
        assert!(crate::flex::try_relu_squared(x0.clone().require_grad()).is_ok(), "flex under autodiff takes the fused path");
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let y = if fused { relu_squared(x.clone()) } else { relu_squared_reference(x.clone()) };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap())]
        };
        let (want, got) = (run(false), run(true));
        assert_close("y", &want[0], &got[0], 1e-6);
        assert_close("dx", &want[1], &got[1], 1e-6);
        let plain = Tensor::<3>::from_data(x0.to_data(), &Device::flex());
        assert_close("no autodiff", &flat(relu_squared_reference(plain.clone())), &flat(relu_squared(plain)), 1e-6);
    }

    /// The in-place soft-cap gives `cap * tanh(z / cap)`, also for a view that does not own
    /// its whole buffer (which must be left alone).
    #[test]
    fn softcap_matches_tanh_and_leaves_shared_buffers_alone() {
        let device = Device::flex();
        let z = Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 20.0), &device);
        let want = flat(softcap_reference(z.clone(), 15.0));
        let before = flat(z.clone());
        assert_close("capped", &want, &flat(softcap(z.clone(), 15.0)), 1e-6);
        assert_eq!(before, flat(z.clone()), "a shared input is not overwritten");
        assert!(crate::flex::try_softcap(z.clone(), 15.0).is_ok(), "flex takes the vectorised path");
        let unique = Tensor::<3>::from_data(z.to_data(), &device);
        assert_close("in place", &want, &flat(softcap(unique, 15.0)), 1e-6);
        let part = z.clone().narrow(2, 0, 100);
        assert_close("narrowed", &flat(softcap_reference(part.clone(), 15.0)), &flat(softcap(part, 15.0)), 1e-6);
        assert_eq!(before, flat(z), "the buffer under a view is not overwritten");
    }
}
