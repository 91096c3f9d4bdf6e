//! Hyperparameters: `hparams.toml` compiled in, a table picked by the platform class, and an
//! optional override merged on top.

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// The compiled-in hyperparameter file.
pub const HPARAMS_TOML: &str = include_str!("../hparams.toml");

/// Every knob of a run. Field meanings are documented in `hparams.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hparams {
    pub depth: usize,
    pub aspect_ratio: usize,
    pub head_dim: usize,
    pub window_pattern: String,
    pub total_batch_tokens: usize,
    pub device_batch_size: usize,
    pub embedding_lr: f64,
    pub unembedding_lr: f64,
    pub scalar_lr: f64,
    pub adam_betas: [f64; 2],
    pub x0_betas: [f64; 2],
    pub adam_eps: f64,
    pub matrix_lr: f64,
    pub weight_decay: f64,
    pub muon_momentum_start: f64,
    pub muon_momentum_end: f64,
    pub muon_momentum_warmup_steps: usize,
    pub muon_beta2: f64,
    pub ns_steps: usize,
    pub warmup_ratio: f64,
    pub warmdown_ratio: f64,
    pub final_lr_frac: f64,
}

impl Hparams {
    /// The `[gpu]` table, then `[cpu]` over it when `class == "cpu"`, then `override_toml`.
    pub fn load(class: &str, override_toml: Option<&str>) -> anyhow::Result<Self> {
        let file: toml::Table = toml::from_str(HPARAMS_TOML).context("hparams.toml is not valid TOML")?;
        let table = |name: &str| -> anyhow::Result<toml::Table> {
            match file.get(name) {
                Some(toml::Value::Table(t)) => Ok(t.clone()),
                _ => bail!("hparams.toml has no [{name}] table"),
            }
        };
        let mut merged = table("gpu")?;
        match class {
            "gpu" => {}
            "cpu" => merged.extend(table("cpu")?),
            other => bail!("unknown platform class {other:?}: expected \"gpu\" or \"cpu\""),
        }
        if let Some(text) = override_toml {
            let over: toml::Table = toml::from_str(text).context("hparams override is not valid TOML")?;
            merged.extend(over);
        }
        // deny_unknown_fields makes serde name an unknown key ("unknown field `foo`").
        let hp: Hparams = toml::Value::Table(merged)
            .try_into()
            .map_err(|e| anyhow::anyhow!("bad hyperparameters: {e}"))?;
        hp.validate()?;
        Ok(hp)
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.depth >= 1, "depth must be at least 1");
        ensure!(self.head_dim >= 2 && self.head_dim % 2 == 0, "head_dim must be even (rotary halves)");
        ensure!(
            !self.window_pattern.is_empty() && self.window_pattern.chars().all(|c| "SLsl".contains(c)),
            "window_pattern must be made of S and L, got {:?}",
            self.window_pattern
        );
        ensure!(self.device_batch_size >= 1, "device_batch_size must be at least 1");
        Ok(())
    }

    /// Model width: `depth * aspect_ratio` rounded up to a multiple of `head_dim`.
    pub fn n_embd(&self) -> usize {
        (self.depth * self.aspect_ratio).div_ceil(self.head_dim) * self.head_dim
    }

    /// Rows per forward/backward after the profile's scale (at least 1).
    pub fn scaled_device_batch(&self, device_batch_scale: f64) -> usize {
        ((self.device_batch_size as f64 * device_batch_scale).round() as usize).max(1)
    }

    /// Gradient-accumulation steps that make `total_batch_tokens` from `device_batch` rows of
    /// `seq_len` tokens; an error if they do not divide it.
    pub fn grad_accum_steps(&self, device_batch: usize, seq_len: usize) -> anyhow::Result<usize> {
        let per_pass = device_batch * seq_len;
        ensure!(
            self.total_batch_tokens % per_pass == 0,
            "total_batch_tokens ({}) is not a multiple of device_batch x seq_len ({device_batch} x {seq_len} = {per_pass})",
            self.total_batch_tokens
        );
        Ok((self.total_batch_tokens / per_pass).max(1))
    }

    /// Learning-rate multiplier at `progress` in [0, 1]: warm-up, flat, then linear warm-down.
    pub fn lr_multiplier(&self, progress: f64) -> f64 {
        if progress < self.warmup_ratio {
            progress / self.warmup_ratio
        } else if progress < 1.0 - self.warmdown_ratio {
            1.0
        } else {
            let cooldown = (1.0 - progress) / self.warmdown_ratio;
            cooldown + (1.0 - cooldown) * self.final_lr_frac
        }
    }

    /// Muon momentum at `step`: linear from start to end over the warm-up steps.
    pub fn muon_momentum(&self, step: usize) -> f64 {
        let frac = (step as f64 / self.muon_momentum_warmup_steps.max(1) as f64).min(1.0);
        (1.0 - frac) * self.muon_momentum_start + frac * self.muon_momentum_end
    }

    /// Muon's (cautious) weight decay at `progress`.
    pub fn muon_weight_decay(&self, progress: f64) -> f64 {
        self.weight_decay * (1.0 - progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_overrides_merge() {
        let gpu = Hparams::load("gpu", None).unwrap();
        assert_eq!((gpu.depth, gpu.n_embd(), gpu.total_batch_tokens), (8, 512, 1 << 19));
        assert_eq!(gpu.grad_accum_steps(128, 2048).unwrap(), 2);
        let cpu = Hparams::load("cpu", Some("matrix_lr = 0.02\ndepth = 2")).unwrap();
        assert_eq!((cpu.depth, cpu.window_pattern.as_str(), cpu.matrix_lr), (2, "L", 0.02));
        assert_eq!(cpu.total_batch_tokens, 1 << 13);
        assert_eq!(cpu.embedding_lr, gpu.embedding_lr, "cpu inherits what it does not override");
    }

    #[test]
    fn unknown_override_key_is_named() {
        let err = Hparams::load("cpu", Some("matrix_lrr = 0.1")).unwrap_err().to_string();
        assert!(err.contains("matrix_lrr"), "{err}");
    }

    #[test]
    fn batch_that_does_not_divide_is_an_error() {
        let hp = Hparams::load("gpu", None).unwrap();
        let err = hp.grad_accum_steps(3, 2048).unwrap_err().to_string();
        assert!(err.contains("total_batch_tokens"), "{err}");
        assert_eq!(hp.scaled_device_batch(0.25), 32);
    }

    #[test]
    fn schedules_match_the_reference() {
        let hp = Hparams::load("gpu", None).unwrap();
        assert_eq!(hp.lr_multiplier(0.2), 1.0);
        assert!((hp.lr_multiplier(0.75) - 0.5).abs() < 1e-12);
        assert_eq!(hp.lr_multiplier(1.0), 0.0);
        assert!((hp.muon_momentum(0) - 0.85).abs() < 1e-12);
        assert!((hp.muon_momentum(150) - 0.90).abs() < 1e-12);
        assert!((hp.muon_momentum(1000) - 0.95).abs() < 1e-12);
    }
}
