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
    /// Rows per evaluation group: rows evaluated together, one position of each per step, by
    /// one fresh trainer process (its memory, a KV cache for these rows, is the bound).
    pub eval_batch_size: usize,
    /// Multiplies the trainer's device batch; the trainer raises accumulation to keep the total.
    pub device_batch_scale: f64,
    /// Steps not counted in the training time (kernel compilation and warm-up).
    pub warmup_steps: u64,
    /// Seconds the warm-up may take at most (capped at 5 % of a time budget); also the grace
    /// for the step in flight when the budget runs out, and part of evaluation's time limit.
    pub warmup_allowance_seconds: f64,
    /// Seconds one evaluation position may take on top of the group's share of training time:
    /// the latency of a decode step where its kernels cost more than their arithmetic (GPUs,
    /// Mesa's software Vulkan). Part of each group's time limit (see the harness's
    /// `eval_limits`).
    pub eval_position_seconds: f64,
    /// Rows evaluated a second time after the groups, together and apart from the rest, whose
    /// log-probabilities must not change with their company (a model that learns from its
    /// group as it is revealed is refused). 0 turns the check off.
    pub eval_witness_rows: usize,
    /// No longer used (evaluation reveals one position at a time, and every logit crosses in
    /// shared memory); accepted so that older profiles still load, with a note.
    pub eval_transport: Option<String>,
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
            eval_batch_size: 1024,
            device_batch_scale: 1.0,
            warmup_steps: 10,
            warmup_allowance_seconds: 15.0,
            eval_position_seconds: 0.02,
            eval_witness_rows: 16,
            eval_transport: None,
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
        if !(self.eval_position_seconds >= 0.0 && self.eval_position_seconds.is_finite()) {
            return Err(format!("eval_position_seconds must be a number >= 0, got {}", self.eval_position_seconds));
        }
        if !matches!(self.dtype.as_str(), "f32" | "bf16" | "f16") {
            return Err(format!("dtype must be f32, bf16 or f16, got {:?}", self.dtype));
        }
        Ok(())
    }

    /// Evaluation groups: `eval_tokens / (eval_batch_size * seq_len)`, as the reference counts
    /// its evaluation batches.
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
        assert_eq!(p.eval_steps(), EVAL_TOKENS / (1024 * 2048));
        assert_eq!(p.eval_steps() * p.eval_batch_size, 10240, "the reference's 80 batches of 128 rows");
        p.validate().unwrap();
    }

    #[test]
    fn partial_profile_keeps_defaults_for_missing_fields() {
        let p = PlatformProfile::parse("name = \"cpu\"\nclass = \"cpu\"\nseq_len = 256\neval_tokens = 65536\neval_batch_size = 8\n", "t").unwrap();
        assert_eq!(p.seq_len, 256);
        assert_eq!(p.warmup_steps, 10);
    }

    /// A profile written for the earlier evaluation (with `eval_transport`) still loads.
    #[test]
    fn an_earlier_profile_with_eval_transport_still_loads() {
        let p = PlatformProfile::parse("eval_transport = \"auto\"\n", "old.toml").unwrap();
        assert_eq!(p.eval_transport.as_deref(), Some("auto"));
        assert_eq!(p.eval_witness_rows, 16);
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_named() {
        let err = PlatformProfile::parse("seq_lenn = 3", "x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("seq_lenn"), "{err}");
        let err = PlatformProfile::parse("seq_len = 4096", "y.toml").unwrap_err().to_string();
        assert!(err.contains("y.toml") && err.contains("seq_len"), "{err}");
    }
}
