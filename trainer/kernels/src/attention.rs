//! Causal softmax attention with optional sliding windows. Burn's own attention under autodiff
//! always runs its unfused fallback (scores, mask, softmax and their backwards as ~12 tensor ops
//! over `[B, H, T, T]`). On flex: one pass per head for the forward, keeping the probabilities,
//! and one for the backward, each a few `gemm` calls, heads in parallel. On LibTorch devices:
//! PyTorch's `scaled_dot_product_attention` (`torch.rs`).

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// Causal softmax attention `softmax(scale * q k^T + mask) v` of `q`, `k`, `v` `[B, H, T, D]`,
/// where query i sees keys `i - window ..= i` (all keys up to i when `window` is `None`).
///
/// On flex one fused pass each way; on LibTorch devices PyTorch's own attention kernel
/// (FlashAttention on CUDA), as the reference takes its kernel from a library.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<4> {
    #[cfg(any(feature = "flex", feature = "tch"))]
    let (q, k, v) = if crate::enabled() {
        #[cfg(feature = "flex")]
        let (q, k, v) = match crate::flex::try_attention(q, k, v, scale, window) {
            Ok(y) => return y,
            Err(qkv) => qkv,
        };
        #[cfg(feature = "tch")]
        let (q, k, v) = match crate::torch::try_attention(q, k, v, scale, window) {
            Ok(y) => return y,
            Err(qkv) => qkv,
        };
        (q, k, v)
    } else {
        (q, k, v)
    };
    causal_attention_reference(q, k, v, scale, window)
}

/// [`causal_attention`] through Burn's attention op, with a window mask when `window` is set.
pub fn causal_attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<4> {
    let [b, h, t, _] = q.dims();
    let mask = window.filter(|&w| w < t).map(|w| crate::window_mask(b, h, t, w, &q.device()));
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: true };
    attention(q, k, v, mask, None, options)
}

/// Attention of queries `q` `[B, H, Tq, D]` over every key of `k`, `v` `[B, H, Tk, D]`, no
/// mask: `softmax(scale * q k^T) v`. Decoding's step, where the caller passes exactly the keys
/// the position may see (its cache, cut to its window). On flex one pass per (batch, head)
/// that reads the cache in place; elsewhere Burn's attention op (PyTorch's on LibTorch).
pub fn attention_step(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let (q, k, v) = if crate::enabled() {
        match crate::flex::try_attention_step(q, k, v, scale) {
            Ok(y) => return y,
            Err(qkv) => qkv,
        }
    } else {
        (q, k, v)
    };
    attention_step_reference(q, k, v, scale)
}

/// [`attention_step`] through Burn's attention op.
pub fn attention_step_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
    attention(q, k, v, None, None, options)
}

/// Sliding-window mask `[B, H, T, T]`, true where key j is more than `window` positions behind
/// query i (FlashAttention's `window_size = (window, 0)`); causality is handled separately.
pub fn window_mask(b: usize, h: usize, t: usize, window: usize, device: &Device) -> Tensor<4, Bool> {
    let blocked: Vec<bool> = (0..t * t).map(|ij| (ij / t) > (ij % t) + window).collect();
    Tensor::<2, Bool>::from_data(TensorData::new(blocked, [t, t]), device)
        .reshape([1, 1, t, t])
        .expand([b, h, t, t])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The fused attention and Burn's (fallback) attention agree on the output and on the
    /// gradients of q, k and v, with and without a sliding window.
    #[test]
    fn fused_attention_matches_reference() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let (b, h, t, d) = (2, 3, 150, 8); // three row blocks, the last one partial
        let r = || Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
        let (q0, k0, v0, w) = (r(), r(), r(), r());
        for window in [None, Some(5), Some(70)] {
            let run = |fused: bool| {
                let (q, k, v) = (q0.clone().require_grad(), k0.clone().require_grad(), v0.clone().require_grad());
                // v through a transpose, as the model's (non-contiguous input).
                let vt = v.clone().swap_dims(1, 2).swap_dims(1, 2);
                let y = if fused {
                    let y = crate::flex::try_attention(q.clone(), k.clone(), vt, 0.35, window);
                    assert!(y.is_ok(), "flex under autodiff takes the fused path");
                    y.ok().unwrap()
                } else {
                    causal_attention_reference(q.clone(), k.clone(), vt, 0.35, window)
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                let flat = |t: Tensor<4>| t.into_data().try_into_vec::<f32>().unwrap();
                [flat(y), flat(q.grad(&grads).unwrap()), flat(k.grad(&grads).unwrap()), flat(v.grad(&grads).unwrap())]
            };
            let (want, got) = (run(false), run(true));
            for (name, (a, b)) in ["out", "dq", "dk", "dv"].iter().zip(want.iter().zip(&got)) {
                let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-4 * scale.max(1.0), "{name} window {window:?}: {x} vs {y}");
                }
            }
        }
    }

    /// One query over the keys up to it gives the last row of causal attention over the whole
    /// sequence, with and without a window: decoding's step and the training path agree.
    #[test]
    fn a_step_over_the_keys_so_far_is_the_last_row_of_causal_attention() {
        let device = Device::flex();
        device.seed(9);
        let (b, h, t, d) = (2, 3, 40, 16);
        let r = || Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (r(), r(), r());
        for window in [None, Some(7)] {
            let whole = causal_attention(q.clone(), k.clone(), v.clone(), 0.25, window);
            for pos in [0usize, 5, 39] {
                let from = window.map_or(0, |w: usize| pos.saturating_sub(w));
                let row = |x: &Tensor<4>, a: usize, z: usize| x.clone().slice(s![.., .., a..z, ..]);
                let step = attention_step(row(&q, pos, pos + 1), row(&k, from, pos + 1), row(&v, from, pos + 1), 0.25);
                let diff = (step - row(&whole, pos, pos + 1)).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-5, "window {window:?} position {pos}: {diff}");
            }
        }
    }

    /// The flex step reads a window of a larger cache through its strides and gives Burn's
    /// attention over the same keys.
    #[test]
    fn the_flex_step_reads_a_cache_window_in_place() {
        let device = Device::flex();
        device.seed(4);
        let r = |t| Tensor::<4>::random([3, 2, t, 16], Distribution::Normal(0.0, 1.0), &device);
        let (q, cache_k, cache_v) = (r(1), r(30), r(30));
        let (k, v) = (cache_k.slice(s![.., .., 4..21, ..]), cache_v.slice(s![.., .., 4..21, ..]));
        let fused = crate::flex::try_attention_step(q.clone(), k.clone(), v.clone(), 0.3);
        assert!(fused.is_ok(), "a strided window of the cache takes the flex path");
        let diff = (fused.ok().unwrap() - attention_step_reference(q, k, v, 0.3)).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn window_mask_blocks_keys_beyond_the_window() {
        let m = window_mask(1, 1, 5, 2, &Device::flex()).reshape([25]).into_data().try_to_vec::<bool>().unwrap();
        // Query 4 sees keys 2..=4 (window 2 behind it), blocks 0 and 1.
        assert_eq!(&m[20..25], &[true, true, false, false, false]);
        assert_eq!(&m[10..15], &[false, false, false, false, false], "causality is not this mask's job");
    }
}
