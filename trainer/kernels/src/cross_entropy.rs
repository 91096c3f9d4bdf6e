//! The loss: mean cross-entropy of the soft-capped logits. On flex the soft-cap and the
//! cross-entropy over 8192-wide logits run as two row-parallel SIMD passes (one each way) that
//! reuse the logits buffer in place, instead of ~15 tensor ops each allocating a `[B*T, V]`
//! tensor, with Burn's scalar `tanh`/`exp` on one core.
//!
//! `loss = mean_i( logsumexp(c_i) - c_i[t_i] )` with `c = cap * tanh(z / cap)`, and
//! `dloss/dz = (softmax(c) - onehot(t)) * (1 - (c/cap)^2) / N`.

use burn::prelude::*;

/// Mean cross-entropy (nats) of the soft-capped logits `cap * tanh(z / cap)`, where `z` is
/// `[N, V]` (raw LM-head outputs) and `targets` `[N]`. Returns `[1]`.
///
/// On flex two row-parallel SIMD passes over the logits' own buffer; on LibTorch chunks of rows
/// through libtorch's `cross_entropy_loss`, the gradient computed chunk by chunk in the
/// forward, so no f32 `[N, V]` intermediate exists beyond one chunk.
pub fn softcap_cross_entropy(z: Tensor<2>, targets: Tensor<1, Int>, cap: f64) -> Tensor<1> {
    #[cfg(any(feature = "flex", feature = "tch"))]
    if crate::enabled() {
        #[cfg(feature = "tch")]
        let z = match crate::torch::try_softcap_cross_entropy(z, &targets, cap) {
            Ok(loss) => return loss,
            Err(z) => z,
        };
        #[cfg(feature = "flex")]
        let z = match crate::flex::try_fused(z, &targets, cap) {
            Ok(loss) => return loss,
            Err(z) => z,
        };
        return softcap_cross_entropy_reference(z, targets, cap);
    }
    softcap_cross_entropy_reference(z, targets, cap)
}

/// `cross_entropy` of the soft-capped logits `cap * tanh(z / cap)`, for raw logits `z` `[N, V]`
/// and `targets` `[N]`: the plain tensor formulation that `kernels::softcap_cross_entropy`
/// fuses on flex.
pub fn softcap_cross_entropy_reference(z: Tensor<2>, targets: Tensor<1, Int>, cap: f64) -> Tensor<1> {
    let [n, v] = z.dims();
    let logits = z.div_scalar(cap).tanh().mul_scalar(cap).reshape([1, n, v]);
    cross_entropy(logits, targets.reshape([1, n]))
}

/// Mean cross-entropy (nats) of `logits` `[B, T, V]` against `targets` `[B, T]`.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let log_probs = burn::tensor::activation::log_softmax(logits.reshape([b * t, v]), 1);
    let picked = log_probs.gather(1, targets.reshape([b * t, 1])); // [B*T, 1]
    picked.mean().neg()
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The fused op and the tensor formulation give the same loss and the same gradients, for
    /// the logits and for a weight upstream of them.
    #[test]
    fn fused_matches_reference_loss_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let (n, c, v) = (37, 16, 300);
        let h = Tensor::<2>::random([n, c], Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::<2>::random([c, v], Distribution::Normal(0.0, 3.0), &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new((0..n as i64).map(|i| (i * 7919) % v as i64).collect::<Vec<_>>(), [n]), &device);
        let run = |fused: bool| {
            let w = w0.clone().detach().require_grad();
            let z = h.clone().matmul(w.clone());
            let loss = if fused { softcap_cross_entropy(z, targets.clone(), 15.0) } else { softcap_cross_entropy_reference(z, targets.clone(), 15.0) };
            let grads = loss.clone().backward();
            (loss.into_scalar::<f32>(), w.grad(&grads).unwrap().into_data().try_into_vec::<f32>().unwrap())
        };
        let z = h.clone().matmul(w0.clone().require_grad());
        assert!(crate::flex::try_fused(z, &targets, 15.0).is_ok(), "flex under autodiff takes the fused path");
        let (loss_ref, grad_ref) = run(false);
        let (loss_fused, grad_fused) = run(true);
        assert!((loss_ref - loss_fused).abs() < 1e-5 * loss_ref.abs().max(1.0), "{loss_ref} vs {loss_fused}");
        let scale = grad_ref.iter().fold(0f32, |m, g| m.max(g.abs()));
        for (a, b) in grad_ref.iter().zip(&grad_fused) {
            assert!((a - b).abs() < 1e-4 * scale, "{a} vs {b}");
        }
    }

    /// Without autodiff (evaluation), the op still gives the reference loss.
    #[test]
    fn fused_without_autodiff_is_the_reference() {
        let device = Device::flex();
        let z = Tensor::<2>::random([5, 40], Distribution::Normal(0.0, 20.0), &device);
        let t = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 39, 7, 7, 20], [5]), &device);
        let a = softcap_cross_entropy(z.clone(), t.clone(), 15.0).into_scalar::<f32>();
        let b = softcap_cross_entropy_reference(z, t, 15.0).into_scalar::<f32>();
        assert_eq!(a, b);
    }
}
