//! MuonAdamW, the reference's combined optimizer: Muon for the 2-D matrices inside the blocks,
//! AdamW for embeddings, the LM head and the per-layer scalars.
//!
//! Every parameter is handled as a 2-D tensor (a vector `[n]` becomes `[1, n]`). Its group is
//! found once, in [`MuonAdamW::new`], by walking the model and reading each parameter's path
//! (`blocks.3.attn.c_q`, `value_embeds.1`, `wte`...) in [`rule_for`]; a parameter that no group
//! claims is an error there, before the first step.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::hparams::Hparams;
use kernels::matmul;
use crate::model::Gpt;

/// Polar Express coefficients (Amsel et al. 2025) for 5 steps, as the reference: each step
/// maps X -> a X + b (X X^T) X + c (X X^T)^2 X.
pub const POLAR_EXPRESS: [(f32, f32, f32); 5] = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
];

/// How one parameter is optimised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// AdamW without weight decay.
    AdamW { lr: f64, beta1: f64, beta2: f64 },
    /// Muon; `lr` already includes the `sqrt(max(1, out/in))` shape factor.
    Muon { lr: f64 },
}

/// Per-parameter state, all `[rows, cols]` like the parameter (or reduced, for `second`).
enum State {
    AdamW { step: i32, m: Tensor<2>, v: Tensor<2> },
    Muon { momentum: Tensor<2>, second: Tensor<2> },
}

/// Schedule values for one step.
#[derive(Debug, Clone, Copy)]
pub struct StepSchedule {
    /// Multiplies every learning rate.
    pub lr_multiplier: f64,
    /// Muon's Nesterov momentum.
    pub muon_momentum: f64,
    /// Muon's cautious weight decay.
    pub muon_weight_decay: f64,
}

pub struct MuonAdamW {
    rules: HashMap<ParamId, Rule>,
    state: HashMap<ParamId, State>,
    /// Orthogonalised Muon directions of the step in progress, computed before the model walk.
    directions: HashMap<ParamId, Tensor<2>>,
    muon_beta2: f64,
    ns_steps: usize,
    eps: f64,
}

impl MuonAdamW {
    /// Assigns every parameter of `model` to its group with the reference's learning rates;
    /// Err names the parameters no group claims.
    pub fn new(model: &Gpt, hp: &Hparams) -> anyhow::Result<Self> {
        Self::for_params(&named_params(model), model.config.n_embd, hp)
    }

    /// [`MuonAdamW::new`] for the parameters `params` of a model `n_embd` wide.
    fn for_params(params: &[NamedParam], n_embd: usize, hp: &Hparams) -> anyhow::Result<Self> {
        let mut rules = HashMap::new();
        let mut ungrouped = Vec::new();
        for p in params {
            match rule_for(&p.path, &p.dims, n_embd, hp) {
                Some(rule) => {
                    rules.insert(p.id, rule);
                }
                None => ungrouped.push(format!("{} {:?}", p.path, p.dims)),
            }
        }
        if !ungrouped.is_empty() {
            anyhow::bail!(
                "parameters without an optimizer group: {}. MuonAdamW takes the 2-D matrices inside `blocks` and the named embeddings, head and scalars; give the others a rule in trainer/src/optim.rs `rule_for`",
                ungrouped.join(", ")
            );
        }
        Ok(Self { rules, state: HashMap::new(), directions: HashMap::new(), muon_beta2: hp.muon_beta2, ns_steps: hp.ns_steps, eps: hp.adam_eps })
    }

    /// One optimizer step: returns the updated model.
    pub fn step(&mut self, model: Gpt, mut grads: GradientsParams, schedule: StepSchedule) -> Gpt {
        self.muon_directions(&grads, schedule);
        let mut mapper = Updater { optim: self, grads: &mut grads, schedule };
        model.map(&mut mapper)
    }

    /// Updates every Muon momentum and orthogonalises the Nesterov directions, all before the
    /// model walk: on flex the matrices then run in parallel, one thread each (Newton-Schulz's
    /// 256-wide gemms are too small to keep two threads busy one at a time).
    fn muon_directions(&mut self, grads: &GradientsParams, sched: StepSchedule) {
        let mu = sched.muon_momentum;
        let mut pending = Vec::new();
        for (&id, rule) in &self.rules {
            let Rule::Muon { .. } = rule else { continue };
            let Some(grad) = grads.get::<2>(id) else { continue };
            let grad = grad.inner();
            let [rows, cols] = grad.dims();
            // NorMuon keeps one second moment per unit of the longer side: reduce over the
            // shorter side (dim 0 = inputs when out >= in, as the reference's red_dim).
            let state = self.state.entry(id).or_insert_with(|| State::Muon {
                momentum: grad.zeros_like(),
                second: if cols >= rows { grad.zeros_like().narrow(0, 0, 1) } else { grad.zeros_like().narrow(1, 0, 1) },
            });
            let State::Muon { momentum, .. } = state else { unreachable!() };
            // Nesterov momentum: buf = m buf + (1-m) g; g = (1-m) g + m buf.
            *momentum = momentum.clone().mul_scalar(mu) + grad.clone().mul_scalar(1.0 - mu);
            pending.push((id, grad.mul_scalar(1.0 - mu) + momentum.clone().mul_scalar(mu)));
        }
        let steps = self.ns_steps;
        let parallel = pending.first().is_some_and(|(_, g)| kernels::is_flex(g));
        self.directions = if parallel {
            use rayon::prelude::*;
            pending.into_par_iter().map(|(id, g)| (id, orthogonalize(g, steps))).collect()
        } else {
            pending.into_iter().map(|(id, g)| (id, orthogonalize(g, steps))).collect()
        };
    }

    /// New value of one parameter `p` `[rows, cols]` given its gradient.
    fn update(&mut self, id: ParamId, p: Tensor<2>, grad: Tensor<2>, sched: StepSchedule) -> Tensor<2> {
        let rule = *self.rules.get(&id).expect("parameter without an optimizer rule");
        match rule {
            Rule::AdamW { lr, beta1, beta2 } => {
                let state = self.state.entry(id).or_insert_with(|| State::AdamW {
                    step: 0,
                    m: p.zeros_like(),
                    v: p.zeros_like(),
                });
                let State::AdamW { step, m, v } = state else { unreachable!() };
                *step += 1;
                *m = m.clone().mul_scalar(beta1) + grad.clone().mul_scalar(1.0 - beta1);
                *v = v.clone().mul_scalar(beta2) + grad.square().mul_scalar(1.0 - beta2);
                let bias1 = 1.0 - beta1.powi(*step);
                let bias2 = 1.0 - beta2.powi(*step);
                let denom = v.clone().div_scalar(bias2).sqrt().add_scalar(self.eps);
                let lr = lr * sched.lr_multiplier;
                p - (m.clone() / denom).mul_scalar(lr / bias1)
            }
            Rule::Muon { lr } => {
                let [rows, cols] = p.dims();
                let red_dim = if cols >= rows { 0 } else { 1 };
                // The momentum and the orthogonalised direction come from `muon_directions`.
                let g = self.directions.remove(&id).expect("Muon direction computed before the model walk");
                drop(grad);
                let Some(State::Muon { second, .. }) = self.state.get_mut(&id) else { unreachable!("Muon state created with its direction") };
                let g = normuon_scale(g, second, red_dim, self.muon_beta2);
                // Cautious weight decay: decay only the entries where the update and the weight
                // agree in sign.
                let lr = lr * sched.lr_multiplier;
                let agree = g.clone().mul(p.clone()).greater_equal_elem(0.0).float();
                let decay = p.clone().mul(agree).mul_scalar(sched.muon_weight_decay);
                p - (g + decay).mul_scalar(lr)
            }
        }
    }
}

/// The optimizer group of the parameter at `path` with shape `dims`, for a model `n_embd` wide:
/// the reference's groups and learning rates. None: no group claims it.
pub fn rule_for(path: &str, dims: &[usize], n_embd: usize, hp: &Hparams) -> Option<Rule> {
    // AdamW learning rates were tuned at width 768; scale them by 1/sqrt(width/768).
    let s = (n_embd as f64 / 768.0).powf(-0.5);
    let [b1, b2] = hp.adam_betas;
    let adam = |lr: f64| Rule::AdamW { lr, beta1: b1, beta2: b2 };
    match path.split('.').next().unwrap_or("") {
        "wte" | "value_embeds" => Some(adam(hp.embedding_lr * s)),
        "lm_head" => Some(adam(hp.unembedding_lr * s)),
        "resid_lambdas" => Some(adam(hp.scalar_lr * 0.01)),
        "x0_lambdas" => {
            let [x0b1, x0b2] = hp.x0_betas;
            Some(Rule::AdamW { lr: hp.scalar_lr, beta1: x0b1, beta2: x0b2 })
        }
        // Muon: every matrix of the blocks, the value-embedding gates included (as the
        // reference, whose Muon group is `transformer.h.parameters()`).
        "blocks" if dims.len() == 2 => {
            let (d_in, d_out) = (dims[0], dims[1]);
            // PyTorch's [rows, cols] = [out, in]: lr * sqrt(max(1, rows / cols)).
            let shape_factor = (d_out as f64 / d_in as f64).max(1.0).sqrt();
            Some(Rule::Muon { lr: hp.matrix_lr * shape_factor })
        }
        _ => None,
    }
}

/// One parameter of the model, as [`named_params`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedParam {
    /// Field names from the model down, `.`-separated, with a list's index: `blocks.3.attn.c_q`.
    pub path: String,
    pub id: ParamId,
    pub dims: Vec<usize>,
}

/// Every float parameter of `model`, in the model's field order.
pub fn named_params(model: &Gpt) -> Vec<NamedParam> {
    struct Walk {
        path: Vec<String>,
        found: Vec<NamedParam>,
    }
    impl burn::module::ModuleVisitor for Walk {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.found.push(NamedParam { path: self.path.join("."), id: param.id, dims: param.lazy_shape().dims::<D>().to_vec() });
        }
    }
    let mut walk = Walk { path: Vec::new(), found: Vec::new() };
    model.visit(&mut walk);
    walk.found
}

/// Approximate polar factor U V^T of `g` (`G = U S V^T`): Frobenius-normalise, then
/// `steps` Polar Express iterations. Works on the Gram matrix of the shorter side.
pub fn orthogonalize(g: Tensor<2>, steps: usize) -> Tensor<2> {
    let [rows, cols] = g.dims();
    let norm = g.clone().square().sum().sqrt().reshape([1, 1]);
    let mut x = g / (norm.mul_scalar(1.02).add_scalar(1e-6));
    for &(a, b, c) in POLAR_EXPRESS.iter().take(steps) {
        if rows > cols {
            let gram = matmul(x.clone().transpose(), x.clone()); // [cols, cols]
            let poly = gram.clone().mul_scalar(b) + matmul(gram.clone(), gram).mul_scalar(c);
            x = x.clone().mul_scalar(a) + matmul(x, poly);
        } else {
            let gram = matmul(x.clone(), x.clone().transpose()); // [rows, rows]
            let poly = gram.clone().mul_scalar(b) + matmul(gram.clone(), gram).mul_scalar(c);
            x = x.clone().mul_scalar(a) + matmul(poly, x);
        }
    }
    x
}

/// NorMuon variance reduction: divide each row (or column) of the orthogonalised update by the
/// root of its running mean square, then rescale so the update keeps its Frobenius norm.
/// `second` is the running mean square, `[1, cols]` (red_dim 0) or `[rows, 1]` (red_dim 1).
fn normuon_scale(g: Tensor<2>, second: &mut Tensor<2>, red_dim: usize, beta2: f64) -> Tensor<2> {
    let v_mean = g.clone().square().mean_dim(red_dim);
    let norm = g.clone().square().sum().sqrt().reshape([1, 1]);
    *second = second.clone().mul_scalar(beta2) + v_mean.mul_scalar(1.0 - beta2);
    let step = second.clone().clamp_min(1e-10).sqrt().recip();
    let scaled = g * step;
    let new_norm = scaled.clone().square().sum().sqrt().reshape([1, 1]).clamp_min(1e-10);
    scaled * (norm / new_norm)
}

/// Walks the model and replaces each parameter that has a gradient by its updated value.
struct Updater<'a> {
    optim: &'a mut MuonAdamW,
    grads: &'a mut GradientsParams,
    schedule: StepSchedule,
}

impl ModuleMapper for Updater<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        // Optimizer math runs outside the autodiff graph, on 2-D views.
        let rows = if D == 1 { 1 } else { dims[0] };
        let cols = dims.iter().product::<usize>() / rows;
        let p = tensor.inner().reshape([rows, cols]);
        let g = grad.inner().reshape([rows, cols]);
        let updated = self.optim.update(id, p, g, self.schedule).reshape(dims);
        let updated = Tensor::from_inner(updated).set_require_grad(require_grad);
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The gemm matmul (kernels::matmul, on flex) leaves Newton-Schulz's result as Burn's matmul
    /// gives it (on ndarray, where the kernels do not run), to float rounding, for wide, tall and
    /// square matrices of the benchmark's sizes.
    #[test]
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // Device::ndarray: still a backend of this build, the plain-matmul side here
    fn orthogonalize_is_unchanged_by_the_gemm_matmul() {
        let device = Device::flex();
        device.seed(9);
        for (rows, cols) in [(256, 1024), (1024, 256), (256, 256)] {
            let g = Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 1.0), &device);
            assert!(kernels::is_flex(&g));
            let on_ndarray = Tensor::<2>::from_data(g.to_data(), &Device::ndarray());
            let fused = orthogonalize(g, 5).into_data().try_into_vec::<f32>().unwrap();
            let plain = orthogonalize(on_ndarray, 5).into_data().try_into_vec::<f32>().unwrap();
            let worst = fused.iter().zip(&plain).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let scale = plain.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(worst <= 1e-4 * scale, "{rows}x{cols}: max diff {worst} of {scale}");
        }
    }

    /// Singular values of the Polar Express output lie near 1: U^T U ≈ I.
    #[test]
    fn orthogonalized_update_is_near_orthogonal() {
        let device = Device::flex();
        device.seed(7);
        for (rows, cols) in [(64, 32), (32, 64), (48, 48)] {
            let g = Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 1.0), &device);
            let u = orthogonalize(g, 5);
            let k = rows.min(cols);
            let gram = if rows >= cols { u.clone().transpose().matmul(u) } else { u.clone().matmul(u.transpose()) };
            let err = (gram - Tensor::<2>::eye(k, &device)).abs().max().into_scalar::<f32>();
            assert!(err < 0.3, "{rows}x{cols}: max |U^T U - I| = {err}");
        }
    }

    /// Every parameter of the reference model gets the reference's group, found by walking
    /// the model; a parameter no group claims is named in an error, in release builds too.
    #[test]
    fn groups_come_from_walking_the_model_and_an_ungrouped_parameter_is_an_error() {
        let hp = Hparams::load("gpu", None).unwrap();
        let cfg = crate::model::GptConfig::new(&hp, 512, 64);
        let mut model = cfg.init(&Device::flex());
        let params = named_params(&model);
        assert_eq!(params.len(), 4 + 8 * 6 + 4 + 4, "wte, lm_head, 2 lambdas; 6 matrices a block; 4 gates; 4 value embeddings");
        let path = |p: &str| params.iter().find(|n| n.path == p).unwrap_or_else(|| panic!("no {p} in {params:?}"));
        assert_eq!(path("blocks.7.attn.ve_gate").dims, vec![32, 4]);
        let optim = MuonAdamW::new(&model, &hp).unwrap();
        let rule = |p: &str| optim.rules[&path(p).id];
        let s = (512f64 / 768.0).powf(-0.5);
        assert_eq!(rule("wte"), Rule::AdamW { lr: 0.6 * s, beta1: 0.8, beta2: 0.95 });
        assert_eq!(rule("value_embeds.1"), rule("wte"));
        assert_eq!(rule("lm_head"), Rule::AdamW { lr: 0.004 * s, beta1: 0.8, beta2: 0.95 });
        assert_eq!(rule("x0_lambdas"), Rule::AdamW { lr: 0.5, beta1: 0.96, beta2: 0.95 });
        assert_eq!(rule("blocks.0.attn.c_q"), Rule::Muon { lr: 0.04 });
        assert_eq!(rule("blocks.0.mlp.c_fc"), Rule::Muon { lr: 0.04 * 2.0 }, "[C, 4C]: rows/cols 4");
        assert_eq!(rule("blocks.0.mlp.c_proj"), Rule::Muon { lr: 0.04 });
        assert_eq!(optim.rules.len(), params.len());
        // A replaced parameter keeps its path, and its group.
        model.resid_lambdas = Param::from_tensor(Tensor::zeros([8], &Device::flex()));
        assert!(MuonAdamW::new(&model, &hp).is_ok());
        // New weights no group claims: a vector inside a block, a matrix outside the blocks.
        let mut more = named_params(&model);
        for (path, dims) in [("blocks.2.attn.q_norm", vec![128]), ("extra_head", vec![512, 8])] {
            assert_eq!(rule_for(path, &dims, 512, &hp), None);
            more.push(NamedParam { path: path.into(), id: ParamId::new(), dims });
        }
        let err = match MuonAdamW::for_params(&more, 512, &hp) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("ungrouped parameters must be refused"),
        };
        assert!(err.contains("blocks.2.attn.q_norm [128]") && err.contains("extra_head [512, 8]") && err.contains("rule_for"), "{err}");
    }

    #[test]
    fn normuon_keeps_the_frobenius_norm() {
        let device = Device::flex();
        let g = Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 1.0), &device);
        let mut second = Tensor::<2>::zeros([1, 16], &device);
        let out = normuon_scale(g.clone(), &mut second, 0, 0.95);
        let n = |t: Tensor<2>| t.square().sum().sqrt().into_scalar::<f32>();
        assert!((n(out) - n(g)).abs() < 1e-3);
    }
}
