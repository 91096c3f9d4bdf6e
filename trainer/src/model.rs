//! The GPT of the reference train.py: untied embeddings, weightless RMSNorm, x0 skip lambdas,
//! rotary + QK-norm attention with sliding windows, value embeddings, ReLU² MLP, soft-capped
//! logits.
//!
//! Precision: parameters, norms, the residual stream, logits and loss are f32; matmuls and
//! attention run in `GptConfig::matmul_dtype`, bf16 on CUDA as the reference's autocast (f32
//! elsewhere). [`to_dtype`] is the way in and out, a no-op in f32.
//!
//! Shapes: `B` batch rows, `T` positions, `C = n_embd`, `H` heads, `D = head_dim`, `V` vocab.
//! Weights are stored `[in, out]` (Burn's convention, the transpose of PyTorch's `[out, in]`),
//! so `linear(x, w)` is `x @ w`.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::{DType, Distribution, FloatDType};
use burn::tensor::activation::sigmoid;
use burn::tensor::module::embedding;

use crate::hparams::Hparams;
use kernels::{relu_squared, rms_norm, rotary_rms_norm};

/// Channels of `x` that feed the value-embedding gate.
pub const VE_GATE_CHANNELS: usize = 32;
/// Logits are soft-capped to `±LOGIT_SOFTCAP`.
pub const LOGIT_SOFTCAP: f64 = 15.0;
/// Rotary embedding base.
pub const ROPE_BASE: f64 = 10000.0;

/// The model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub seq_len: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub head_dim: usize,
    pub window_pattern: String,
    /// What matmuls and attention run in: `F32`, or `BF16` (autocast) where the run's dtype
    /// asks for it and the device has it.
    pub matmul_dtype: FloatDType,
}

/// Parameter counts by group, as the reference's `num_scaling_params`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamCounts {
    pub wte: usize,
    pub value_embeds: usize,
    pub lm_head: usize,
    pub blocks: usize,
    pub scalars: usize,
    pub total: usize,
}

impl GptConfig {
    pub fn new(hp: &Hparams, vocab_size: usize, seq_len: usize) -> Self {
        let n_embd = hp.n_embd();
        Self {
            vocab_size,
            seq_len,
            n_layer: hp.depth,
            n_head: n_embd / hp.head_dim,
            n_embd,
            head_dim: hp.head_dim,
            window_pattern: hp.window_pattern.to_uppercase(),
            matmul_dtype: FloatDType::F32,
        }
    }

    /// Whether layer `i` has a value embedding: alternating, the last layer always.
    pub fn has_ve(&self, i: usize) -> bool {
        i % 2 == (self.n_layer - 1) % 2
    }

    /// Attention window of every layer: S = seq_len / 2, L = seq_len; the last layer is L.
    pub fn window_sizes(&self) -> Vec<usize> {
        let pattern: Vec<char> = self.window_pattern.chars().collect();
        (0..self.n_layer)
            .map(|i| match pattern[i % pattern.len()] {
                'S' if i + 1 < self.n_layer => self.seq_len / 2,
                _ => self.seq_len,
            })
            .collect()
    }

    /// Parameter counts from the shapes alone (no model needed).
    pub fn param_counts(&self) -> ParamCounts {
        let (v, c) = (self.vocab_size, self.n_embd);
        let kv_dim = self.n_head * self.head_dim;
        let ve_layers = (0..self.n_layer).filter(|&i| self.has_ve(i)).count();
        let per_block = 4 * c * c + 8 * c * c; // q, k, v, proj + fc, proj
        let wte = v * c;
        let value_embeds = ve_layers * v * kv_dim;
        let lm_head = c * v;
        let blocks = self.n_layer * per_block + ve_layers * VE_GATE_CHANNELS * self.n_head;
        let scalars = 2 * self.n_layer;
        ParamCounts { wte, value_embeds, lm_head, blocks, scalars, total: wte + value_embeds + lm_head + blocks + scalars }
    }

    /// Training FLOPs per token, the reference's `estimate_flops`: 6 x (params - embeddings -
    /// scalars) + 12 x H x D x min(window, T) per layer.
    pub fn flops_per_token(&self) -> f64 {
        let p = self.param_counts();
        let dense = p.total - p.wte - p.value_embeds - p.scalars;
        let attn: usize = self
            .window_sizes()
            .iter()
            .map(|&w| 12 * self.n_head * self.head_dim * w.min(self.seq_len))
            .sum();
        (6 * dense + attn) as f64
    }

    /// A freshly initialised model on `device` (seed the device first for reproducibility).
    pub fn init(&self, device: &Device) -> Gpt {
        let (v, c, kv) = (self.vocab_size, self.n_embd, self.n_head * self.head_dim);
        let s = 3f64.sqrt() / (c as f64).sqrt();
        let uniform = |shape: [usize; 2]| Param::from_tensor(Tensor::<2>::random(shape, Distribution::Uniform(-s, s), device));
        let zeros = |shape: [usize; 2]| Param::from_tensor(Tensor::<2>::zeros(shape, device));
        let blocks = (0..self.n_layer)
            .map(|i| Block {
                attn: Attention {
                    c_q: uniform([c, kv]),
                    c_k: uniform([c, kv]),
                    c_v: uniform([c, kv]),
                    c_proj: zeros([c, c]),
                    // Zero gate: 2 * sigmoid(0) = 1, the value embedding enters at full weight.
                    ve_gate: self.has_ve(i).then(|| zeros([VE_GATE_CHANNELS, self.n_head])),
                },
                mlp: Mlp { c_fc: uniform([c, 4 * c]), c_proj: zeros([4 * c, c]) },
            })
            .collect();
        Gpt {
            wte: Param::from_tensor(Tensor::random([v, c], Distribution::Normal(0.0, 1.0), device)),
            blocks,
            value_embeds: (0..self.n_layer).map(|i| self.has_ve(i).then(|| uniform([v, kv]))).collect(),
            lm_head: Param::from_tensor(Tensor::random([c, v], Distribution::Normal(0.0, 0.001), device)),
            resid_lambdas: Param::from_tensor(Tensor::ones([self.n_layer], device)),
            x0_lambdas: Param::from_tensor(Tensor::full([self.n_layer], 0.1, device)),
            config: self.clone(),
        }
    }
}

/// The whole model.
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `[V, C]`.
    pub wte: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    /// Value embedding of layer i, `[V, H*D]`, on the layers where `has_ve(i)`.
    pub value_embeds: Vec<Option<Param<Tensor<2>>>>,
    /// Output head `[C, V]` (untied from `wte`).
    pub lm_head: Param<Tensor<2>>,
    /// Per-layer weight of the running residual `[n_layer]`.
    pub resid_lambdas: Param<Tensor<1>>,
    /// Per-layer weight of the first-layer input x0 `[n_layer]`.
    pub x0_lambdas: Param<Tensor<1>>,
    #[module(skip)]
    pub config: GptConfig,
}

/// One transformer layer: attention then MLP, both pre-norm residuals, no biases.
#[derive(Module, Debug)]
pub struct Block {
    pub attn: Attention,
    pub mlp: Mlp,
}

/// Causal self-attention: q, k, v projections, the value-embedding gate, rotary + QK-norm,
/// sliding windows, the output projection.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[C, H*D]` each.
    pub c_q: Param<Tensor<2>>,
    pub c_k: Param<Tensor<2>>,
    pub c_v: Param<Tensor<2>>,
    /// `[C, C]`, zero-initialised.
    pub c_proj: Param<Tensor<2>>,
    /// `[VE_GATE_CHANNELS, H]`, on value-embedding layers only.
    pub ve_gate: Option<Param<Tensor<2>>>,
}

/// The MLP: `relu(x W_fc)^2 W_proj`, 4x wide.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[C, 4C]`.
    pub c_fc: Param<Tensor<2>>,
    /// `[4C, C]`, zero-initialised.
    pub c_proj: Param<Tensor<2>>,
}

impl Gpt {
    /// Soft-capped logits `[B, T, V]` for token ids `[B, T]`.
    pub fn forward(&self, idx: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.hidden(idx))
    }

    /// Training loss: mean cross-entropy (nats) of the soft-capped logits against `targets`
    /// `[B, T]`, `[1]`. The same math as `cross_entropy(self.forward(idx), targets)`; the LM
    /// head's soft-cap and cross-entropy run as one fused op on flex (trainer/kernels).
    pub fn loss(&self, idx: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [b, t] = idx.dims();
        let z = to_dtype(dense(self.hidden(idx), self.lm_head.val(), self.config.matmul_dtype), FloatDType::F32);
        let z = z.reshape([b * t, self.config.vocab_size]);
        kernels::softcap_cross_entropy(z, targets.reshape([b * t]), LOGIT_SOFTCAP)
    }

    /// The final normed hidden states `[B, T, C]`, the LM head's input.
    pub fn hidden(&self, idx: Tensor<2, Int>) -> Tensor<3> {
        let cfg = &self.config;
        let t = idx.dims()[1];
        let (cos, sin) = kernels::rotary_tables(t, cfg.head_dim, ROPE_BASE, &idx.device());
        // A sliding window only where it is shorter than the sequence.
        let windows: Vec<Option<usize>> = cfg.window_sizes().into_iter().map(|w| (w < t).then_some(w)).collect();
        self.layers(idx, &cos, &sin, &windows, None)
    }

    /// Next-token logits `[B, V]` after `tokens` `[B]`, fed at the position after those
    /// `cache` holds, which it extends: evaluation's decoder, one position of every row at a
    /// time. The same layers as [`Gpt::forward`], attending over the cached keys.
    pub fn step(&self, tokens: Tensor<1, Int>, cache: &mut KvCache) -> Tensor<2> {
        let b = tokens.dims()[0];
        let pos = cache.len;
        let cos = cache.cos.clone().narrow(2, pos, 1);
        let sin = cache.sin.clone().narrow(2, pos, 1);
        let windows: Vec<Option<usize>> = self.config.window_sizes().into_iter().map(Some).collect();
        let h = self.layers(tokens.reshape([b, 1]), &cos, &sin, &windows, Some(cache));
        cache.len += 1;
        self.head(h).reshape([b, self.config.vocab_size])
    }

    /// The soft-capped logits of hidden states `[B, T, C]`: `[B, T, V]`, f32.
    fn head(&self, h: Tensor<3>) -> Tensor<3> {
        let z = to_dtype(dense(h, self.lm_head.val(), self.config.matmul_dtype), FloatDType::F32);
        kernels::softcap(z, LOGIT_SOFTCAP)
    }

    /// The embeddings through every block and the final norm. `cos`, `sin`: the rotary rows of
    /// `idx`'s positions; `windows`: each layer's attention window; `cache`: the keys and values
    /// of the positions before (decoding), or none (whole rows).
    fn layers(&self, idx: Tensor<2, Int>, cos: &Tensor<4>, sin: &Tensor<4>, windows: &[Option<usize>], mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let cfg = &self.config;
        let (cos, sin) = (to_dtype(cos.clone(), cfg.matmul_dtype), to_dtype(sin.clone(), cfg.matmul_dtype));
        let mut x = rms_norm(embedding(self.wte.val(), idx.clone())); // [B, T, C]
        let x0 = x.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let resid = self.resid_lambdas.val().narrow(0, i, 1).reshape([1, 1, 1]);
            let skip = self.x0_lambdas.val().narrow(0, i, 1).reshape([1, 1, 1]);
            x = x * resid + x0.clone() * skip;
            let ve = self.value_embeds[i].as_ref().map(|w| embedding(w.val(), idx.clone())); // [B, T, H*D]
            let past = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, ve, &cos, &sin, windows[i], cfg, past);
        }
        rms_norm(x)
    }
}

/// The keys and values of every layer for decoding `rows` rows of up to `seq_len` positions,
/// and the rotary tables of those positions.
pub struct KvCache {
    layers: Vec<LayerCache>,
    cos: Tensor<4>,
    sin: Tensor<4>,
    /// Positions fed so far.
    len: usize,
}

/// One layer's keys and values `[B, H, seq_len, D]`, positions `0..len` filled; allocated at the
/// first position, in the dtype of the keys.
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(cfg: &GptConfig, device: &Device) -> KvCache {
        let (cos, sin) = kernels::rotary_tables(cfg.seq_len, cfg.head_dim, ROPE_BASE, device);
        let layers = (0..cfg.n_layer).map(|_| LayerCache { kv: None, len: 0, capacity: cfg.seq_len }).collect();
        KvCache { layers, cos, sin, len: 0 }
    }
}

impl LayerCache {
    /// Appends `k`, `v` `[B, H, 1, D]` as the next position and attends `q` `[B, H, 1, D]` to
    /// the keys `pos - window ..= pos` (every key so far without a window). The keys are written
    /// in place, so a step costs a read of the cache, not a copy of it.
    fn attend(&mut self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, window: Option<usize>) -> Tensor<4> {
        let pos = self.len;
        assert!(pos < self.capacity, "decoding past the {} positions the cache holds", self.capacity);
        let (keys, values) = self.kv.take().unwrap_or_else(|| {
            let empty = || k.zeros_like().repeat_dim(2, self.capacity);
            (empty(), empty())
        });
        let keys = keys.slice_assign(s![.., .., pos..pos + 1, ..], k);
        let values = values.slice_assign(s![.., .., pos..pos + 1, ..], v);
        let from = window.map_or(0, |w| pos.saturating_sub(w));
        let seen = |t: &Tensor<4>| t.clone().slice(s![.., .., from..pos + 1, ..]);
        let y = kernels::attention_step(q, seen(&keys), seen(&values), scale);
        self.kv = Some((keys, values));
        self.len += 1;
        y
    }
}

impl Block {
    /// `x` `[B, T, C]` (f32) -> `[B, T, C]` (f32); `ve` `[B, T, H*D]` on value-embedding layers;
    /// `cos`, `sin` `[1, 1, T, D/2]`; `past`: this layer's cache when decoding.
    pub fn forward(
        &self,
        x: Tensor<3>,
        ve: Option<Tensor<3>>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        window: Option<usize>,
        cfg: &GptConfig,
        past: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let x = x.clone() + to_dtype(self.attn.forward(rms_norm(x), ve, cos, sin, window, cfg, past), FloatDType::F32);
        x.clone() + to_dtype(self.mlp.forward(rms_norm(x), cfg), FloatDType::F32)
    }
}

impl Mlp {
    /// `x` `[B, T, C]` -> `[B, T, C]`, in `cfg.matmul_dtype`.
    pub fn forward(&self, x: Tensor<3>, cfg: &GptConfig) -> Tensor<3> {
        let dt = cfg.matmul_dtype;
        let h = relu_squared(dense(x, self.c_fc.val(), dt)); // [B, T, 4C]
        dense(h, self.c_proj.val(), dt)
    }
}

impl Attention {
    /// `x` `[B, T, C]` -> `[B, T, C]`, in `cfg.matmul_dtype`; query i sees keys
    /// `i - window ..= i` (all up to i without a window). With `past` (decoding, T = 1) the
    /// keys before come from the cache, which the new key and value join.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: Tensor<3>,
        ve: Option<Tensor<3>>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        window: Option<usize>,
        cfg: &GptConfig,
        past: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let (h, d, dt) = (cfg.n_head, cfg.head_dim, cfg.matmul_dtype);
        let x = to_dtype(x, dt); // once for q, k, v and the gate
        let q = dense(x.clone(), self.c_q.val(), dt).reshape([b, t, h, d]);
        let k = dense(x.clone(), self.c_k.val(), dt).reshape([b, t, h, d]);
        let mut v = dense(x.clone(), self.c_v.val(), dt).reshape([b, t, h, d]);
        // Value residual (ResFormer): v += 2 * sigmoid(x[..., :32] @ W_g) * ve, one gate per head.
        if let (Some(ve), Some(gate)) = (ve, &self.ve_gate) {
            let g = sigmoid(dense(x.narrow(2, 0, VE_GATE_CHANNELS), gate.val(), dt)).mul_scalar(2.0); // [B, T, H]
            v = v + g.unsqueeze_dim::<4>(3) * to_dtype(ve, dt).reshape([b, t, h, d]);
        }
        // [B, H, T, D]; rotary first, then QK-norm, as the reference (one fused op on flex).
        let q = rotary_rms_norm(q.swap_dims(1, 2), cos, sin);
        let k = rotary_rms_norm(k.swap_dims(1, 2), cos, sin);
        let v = v.swap_dims(1, 2);
        let scale = 1.0 / (d as f64).sqrt();
        let y = match past {
            // Causal attention with a window; fused on flex and on LibTorch (trainer/kernels).
            None => kernels::causal_attention(q, k, v, scale, window), // [B, H, T, D]
            Some(cache) => cache.attend(q, k, v, scale, window),
        };
        dense(y.swap_dims(1, 2).reshape([b, t, c]), self.c_proj.val(), dt) // in `dt`
    }
}

/// `x @ w` for `x` `[B, T, C_in]` and `w` `[C_in, C_out]`, as one `[B*T, C_in] @ [C_in, C_out]`
/// matmul in `dtype`, which the output keeps. Same math as `linear(x, w, None)`, which keeps a
/// batched matmul when T is a multiple of its row tile and re-packs `w` for each of the B
/// matrices on flex.
pub fn dense(x: Tensor<3>, w: Tensor<2>, dtype: FloatDType) -> Tensor<3> {
    let [b, t, c] = x.dims();
    let out = w.dims()[1];
    kernels::matmul(to_dtype(x.reshape([b * t, c]), dtype), to_dtype(w, dtype)).reshape([b, t, out])
}

/// `x` in `dtype`: a cast (differentiable: its gradient comes back in `x`'s dtype), or `x`
/// itself when it is already in `dtype`.
pub fn to_dtype<const N: usize>(x: Tensor<N>, dtype: FloatDType) -> Tensor<N> {
    if x.dtype() == DType::from(dtype) { x } else { x.cast(dtype) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_config() -> GptConfig {
        let hp = Hparams::load("gpu", None).unwrap();
        GptConfig::new(&hp, 8192, 2048)
    }

    #[test]
    fn reference_shape_and_windows() {
        let cfg = reference_config();
        assert_eq!((cfg.n_embd, cfg.n_head, cfg.head_dim), (512, 4, 128));
        assert_eq!(cfg.window_sizes(), vec![1024, 1024, 1024, 2048, 1024, 1024, 1024, 2048]);
        let ve: Vec<usize> = (0..8).filter(|&i| cfg.has_ve(i)).collect();
        assert_eq!(ve, vec![1, 3, 5, 7]);
    }

    #[test]
    fn reference_param_count_formula_is_50_3m() {
        let p = reference_config().param_counts();
        assert_eq!(format!("{:.1}", p.total as f64 / 1e6), "50.3");
        assert_eq!(p.total, 50_332_176);
    }

    /// Builds the full reference-size model (~200 MB) and counts its parameters.
    #[test]
    fn reference_model_has_50_3m_params() {
        let cfg = reference_config();
        let model = cfg.init(&Device::flex());
        assert_eq!(model.num_params(), cfg.param_counts().total);
    }

    #[test]
    fn rotary_preserves_head_vector_norms() {
        let device = Device::flex();
        let (b, h, t, d) = (2, 3, 17, 8);
        let x = Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &device);
        let (cos, sin) = kernels::rotary_tables(t, d, ROPE_BASE, &device);
        let y = kernels::rotary(x.clone(), &cos, &sin);
        let norms = |x: Tensor<4>| x.square().sum_dim(3).sqrt().into_data().try_to_vec::<f32>().unwrap();
        let diff = y.clone().sub(x.clone()).abs().max().into_scalar::<f32>();
        assert!(diff > 1e-3, "rotary should change the vectors");
        for (a, b) in norms(x).iter().zip(norms(y)) {
            assert!((a - b).abs() < 1e-4 * a.max(1.0), "{a} vs {b}");
        }
    }


    #[test]
    fn forward_shapes_and_causality() {
        let device = Device::flex();
        device.seed(1);
        let cfg = GptConfig { vocab_size: 64, seq_len: 8, n_layer: 2, n_head: 2, n_embd: 64, head_dim: 32, window_pattern: "SL".into(), matmul_dtype: FloatDType::F32 };
        let mut model = cfg.init(&device);
        // Non-zero output projections so every layer affects the logits.
        for blk in model.blocks.iter_mut() {
            blk.attn.c_proj = Param::from_tensor(Tensor::random([64, 64], Distribution::Normal(0.0, 0.1), &device));
            blk.mlp.c_proj = Param::from_tensor(Tensor::random([256, 64], Distribution::Normal(0.0, 0.1), &device));
        }
        let a: Vec<i64> = vec![1, 2, 3, 4, 5, 6, 7, 8];
        let mut bvec = a.clone();
        bvec[6] = 30; // changes position 6 only
        let ids = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [1, 8]), &device);
        let la = model.forward(ids(a));
        let lb = model.forward(ids(bvec));
        assert_eq!(la.dims(), [1, 8, 64]);
        let diff = (la - lb).abs().max_dim(2).into_data().try_to_vec::<f32>().unwrap();
        assert!(diff[..6].iter().all(|&d| d < 1e-5), "the past must not see the future: {diff:?}");
        assert!(diff[6] > 1e-4 && diff[7] > 1e-4, "{diff:?}");
    }
}
