//! Rotary position embedding, and the attention's rotary + QK-norm as one op (on flex one
//! row-parallel pass each way instead of ~10 tensor ops: halves, products, concatenation, the
//! norm). [`rotary_tables`] gives the angles for a base.

use burn::prelude::*;

use crate::rms_norm;

/// `rms_norm(rotary(x, cos, sin))`, the attention's rotary embedding then QK-norm, for `x`
/// `[B, H, T, D]` and the tables `[1, 1, T, D/2]` of [`rotary_tables`]. On flex
/// one row-parallel pass each way instead of ~10 tensor ops (halves, products, concatenation,
/// the norm) and their backwards; on LibTorch one op of three libtorch kernels for the rotation
/// and `torch.rms_norm`, with libtorch's backward.
pub fn rotary_rms_norm(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    #[cfg(any(feature = "flex", feature = "tch"))]
    if crate::enabled() {
        // LibTorch first: flex's check reads the tables back to the host.
        #[cfg(feature = "tch")]
        let x = match crate::torch::try_rotary_rms_norm(x, cos, sin) {
            Ok(y) => return y,
            Err(x) => x,
        };
        #[cfg(feature = "flex")]
        let x = match crate::flex::try_rotary_rms_norm(x, cos, sin) {
            Ok(y) => return y,
            Err(x) => x,
        };
        return rms_norm(crate::rotary(x, cos, sin));
    }
    rms_norm(crate::rotary(x, cos, sin))
}

/// Half-split rotation of `x` `[B, H, T, D]`: `(x1, x2) -> (x1 cos + x2 sin, x2 cos - x1 sin)`.
pub fn rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let y1 = x1.clone() * cos.clone() + x2.clone() * sin.clone();
    let y2 = x2 * cos.clone() - x1 * sin.clone();
    Tensor::cat(vec![y1, y2], 3)
}

/// Rotary tables `cos`, `sin`, each `[1, 1, T, D/2]`: angle `t / base^(2j/D)` (the model's `ROPE_BASE`).
pub fn rotary_tables(t: usize, head_dim: usize, base: f64, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for j in 0..half {
            let inv_freq = 1.0 / base.powf((2 * j) as f64 / head_dim as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let table = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, t, half]), device);
    (table(cos), table(sin))
}


#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, flat};
    use burn::tensor::Distribution;

    /// The fused rotary + RMSNorm gives the tensor formulation's output and input gradient, on
    /// a transposed (strided) input as the model's, several parallel chunks, and without
    /// autodiff.
    #[test]
    fn rotary_rms_norm_matches_reference_with_gradients() {
        let device = Device::flex().autodiff();
        device.seed(19);
        let (b, t, h, d) = (2, 150, 3, 16);
        let (cos, sin) = rotary_tables(t, d, 10000.0, &device);
        let x0 = Tensor::<4>::random([b, t, h, d], Distribution::Normal(0.3, 1.5), &device);
        let g = Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
        assert!(crate::flex::try_rotary_rms_norm(x0.clone().require_grad().swap_dims(1, 2), &cos, &sin).is_ok(), "flex under autodiff takes the fused path");
        let run = |fused: bool| {
            let x = x0.clone().require_grad();
            let xt = x.clone().swap_dims(1, 2); // [B, H, T, D], strided
            let y = if fused { rotary_rms_norm(xt, &cos, &sin) } else { crate::rms_norm_reference(crate::rotary(xt, &cos, &sin)) };
            let grads = (y.clone() * g.clone()).sum().backward();
            [flat(y), flat(x.grad(&grads).unwrap())]
        };
        let (want, got) = (run(false), run(true));
        assert_close("y", &want[0], &got[0], 1e-5);
        assert_close("dx", &want[1], &got[1], 1e-4);
        let plain = Device::flex();
        let (pc, ps) = rotary_tables(t, d, 10000.0, &plain);
        let px = Tensor::<4>::from_data(x0.to_data(), &plain).swap_dims(1, 2);
        assert_close("no autodiff", &flat(crate::rms_norm_reference(crate::rotary(px.clone(), &pc, &ps))), &flat(rotary_rms_norm(px, &pc, &ps)), 1e-5);
    }
}
