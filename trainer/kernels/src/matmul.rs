//! `x @ w`: on flex one `gemm` call into a fresh buffer, forward and backward (flex's own
//! matmul zero-fills its output and then copies it into an aligned one, 13-15% of a step at d256).

use burn::prelude::*;

/// `x @ w` for `x` `[N, K]` and `w` `[K, M]`: `[N, M]`.
///
/// On flex (with or without autodiff) one `gemm` call into a fresh buffer, and two for the
/// backward: flex's own matmul zero-fills its output and then copies it into an aligned one
/// (see runner/benches/README.md, "Upstream limits"), 13-15% of a step at d256.
pub fn matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if crate::enabled() {
        return match crate::flex::try_matmul(x, w) {
            Ok(y) => y,
            Err((x, w)) => x.matmul(w),
        };
    }
    x.matmul(w)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, flat};
    use burn::tensor::Distribution;

    /// The gemm matmul gives Burn's product and Burn's gradients for both operands, for
    /// contiguous, transposed (strided) and narrowed inputs, large enough to take the threaded
    /// path, and without autodiff.
    #[test]
    fn matmul_matches_burn_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let r = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (x0, wt0, g) = (r([300, 97]), r([130, 97]), r([300, 130]));
        let run = |fused: bool| {
            let (x, wt) = (x0.clone().require_grad(), wt0.clone().require_grad());
            // w through a transpose and x through a narrow: both strided views.
            let (xv, w) = (x.clone().narrow(1, 0, 90), wt.clone().transpose().narrow(0, 0, 90));
            let y = if fused {
                let y = crate::flex::try_matmul(xv, w);
                assert!(y.is_ok(), "flex under autodiff takes the gemm path");
                y.ok().unwrap()
            } else {
                xv.matmul(w)
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap()), flat(wt.grad(&grads).unwrap())]
        };
        let (want, got) = (run(false), run(true));
        for (name, (a, b)) in ["y", "dx", "dw"].iter().zip(want.iter().zip(&got)) {
            assert_close(name, a, b, 1e-5);
        }
        let plain = Device::flex();
        let (x, w) = (Tensor::<2>::from_data(x0.to_data(), &plain), Tensor::<2>::from_data(wt0.to_data(), &plain).transpose());
        assert_close("no autodiff", &flat(x.clone().matmul(w.clone())), &flat(matmul(x, w)), 1e-5);
    }

    /// Tensors of another float type (the kernels are f32) go to Burn's own ops.
    #[test]
    fn non_f32_tensors_take_burns_ops() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2., 3., 4.], [2, 2]), &device).cast(burn::tensor::DType::F64);
        assert_eq!(x.dtype(), burn::tensor::DType::F64);
        assert!(crate::flex::try_matmul(x.clone(), x.clone()).is_err());
        assert!(crate::flex::try_rms_norm(x.clone()).is_err());
        assert_eq!(flat(matmul(x.clone(), x.clone())), vec![7., 10., 15., 22.]);
    }
}
