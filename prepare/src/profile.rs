//! Platform profiles: what a kind of machine changes about a run, read from `configs/platforms/*.toml`.
//!
//! The harness reads the profile and hands it to the trainer (which scales its own
//! hyperparameters by it) and to [`crate::eval`] (which takes the evaluation size from it, never
//! from the trainer).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::constants::{EVAL_TOKENS, MAX_SEQ_LEN};

/// One platform profile. Every field has the reference value as its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformProfile {
    /// Short name, e.g. `cuda`, `cpu`.
    pub name: String,
    /// `gpu` or `cpu`: the trainer picks its hyperparameter table by this class.
    pub class: String,
    /// Backend the runner picks by default on this platform (`flex`, `ndarray`, `wgpu`, `tch`).
    pub backend: String,
    /// Sequence length for training and evaluation.
    pub seq_len: usize,
    /// Validation tokens scored by `evaluate_bpb`.
    pub eval_tokens: usize,
    /// Rows per evaluation batch.
    pub eval_batch_size: usize,
    /// Multiplies the trainer's device batch; the trainer raises accumulation to keep the total.
    pub device_batch_scale: f64,
    /// Steps not counted in the training time (kernel compilation and warm-up).
    pub warmup_steps: u64,
    /// Seconds the warm-up may take at most (capped at 5 % of a time budget); also the grace
    /// for the step in flight when the budget runs out, and part of evaluation's time limit.
    pub warmup_allowance_seconds: f64,
    /// How the trainer answers evaluation: `full` (every logit, through shared memory),
    /// `summary` (per-position values, full logits at positions the harness picks), or `auto`
    /// (full when a batch's logits fit in 1 GiB).
    pub eval_transport: String,
    /// Floating-point type of the weights and activations (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// Kernel fusion (CubeCL backends only).
    pub fusion: bool,
    /// Kernel autotuning (CubeCL backends only).
    pub autotune: bool,
    /// Peak FLOP/s for MFU; 0 means "measure the device" (the CPU formula in the harness).
    pub peak_flops: f64,
}

impl Default for PlatformProfile {
    fn default() -> Self {
        Self {
            name: "reference".into(),
            class: "gpu".into(),
            backend: "tch".into(),
            seq_len: MAX_SEQ_LEN,
            eval_tokens: EVAL_TOKENS,
            eval_batch_size: 128,
            device_batch_scale: 1.0,
            warmup_steps: 10,
            warmup_allowance_seconds: 15.0,
            eval_transport: "auto".into(),
            dtype: "bf16".into(),
            fusion: true,
            autotune: true,
            peak_flops: 989.5e12,
        }
    }
}

/// A profile file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read platform profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("platform profile {path} is not valid TOML for a profile: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("platform profile {path}: {message}")]
    Invalid { path: String, message: String },
}

impl PlatformProfile {
    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates profile text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let profile: Self = toml::from_str(text).map_err(|source| ProfileError::Parse {
            path: origin.to_string(),
            source,
        })?;
        profile.validate().map_err(|message| ProfileError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(profile)
    }

    /// Checks the ranges that would otherwise fail deep inside a run.
    pub fn validate(&self) -> Result<(), String> {
        if self.seq_len == 0 || self.seq_len > MAX_SEQ_LEN {
            return Err(format!("seq_len must be in 1..={MAX_SEQ_LEN}, got {}", self.seq_len));
        }
        if self.eval_batch_size == 0 {
            return Err("eval_batch_size must be at least 1".into());
        }
        if self.eval_tokens < self.seq_len * self.eval_batch_size {
            return Err(format!(
                "eval_tokens ({}) must cover at least one batch of eval_batch_size x seq_len ({})",
                self.eval_tokens,
                self.seq_len * self.eval_batch_size
            ));
        }
        if !(self.device_batch_scale > 0.0 && self.device_batch_scale <= 1.0) {
            return Err(format!(
                "device_batch_scale must be in (0, 1], got {}",
                self.device_batch_scale
            ));
        }
        if !matches!(self.class.as_str(), "gpu" | "cpu") {
            return Err(format!("class must be \"gpu\" or \"cpu\", got {:?}", self.class));
        }
        if !(self.warmup_allowance_seconds >= 0.0 && self.warmup_allowance_seconds.is_finite()) {
            return Err(format!("warmup_allowance_seconds must be a number >= 0, got {}", self.warmup_allowance_seconds));
        }
        if !matches!(self.eval_transport.as_str(), "auto" | "full" | "summary") {
            return Err(format!("eval_transport must be auto, full or summary, got {:?}", self.eval_transport));
        }
        if !matches!(self.dtype.as_str(), "f32" | "bf16" | "f16") {
            return Err(format!("dtype must be f32, bf16 or f16, got {:?}", self.dtype));
        }
        Ok(())
    }

    /// Evaluation batches: `eval_tokens / (eval_batch_size * seq_len)`, as the reference.
    pub fn eval_steps(&self) -> usize {
        self.eval_tokens / (self.eval_batch_size * self.seq_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_values() {
        let p = PlatformProfile::default();
        assert_eq!(p.eval_steps(), EVAL_TOKENS / (128 * 2048));
        assert_eq!(p.eval_steps(), 80);
        p.validate().unwrap();
    }

    #[test]
    fn partial_profile_keeps_defaults_for_missing_fields() {
        let p = PlatformProfile::parse("name = \"cpu\"\nclass = \"cpu\"\nseq_len = 256\neval_tokens = 65536\neval_batch_size = 8\n", "t").unwrap();
        assert_eq!(p.seq_len, 256);
        assert_eq!(p.warmup_steps, 10);
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_named() {
        let err = PlatformProfile::parse("seq_lenn = 3", "x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("seq_lenn"), "{err}");
        let err = PlatformProfile::parse("seq_len = 4096", "y.toml").unwrap_err().to_string();
        assert!(err.contains("y.toml") && err.contains("seq_len"), "{err}");
    }
}
