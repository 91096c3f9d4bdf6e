//! The run summary: what the harness says about one run, written (and signed) as the summary
//! JSON and read back by the runner. One type on both sides, so a renamed field fails to
//! compile instead of reading as missing at run time.
//!
//! A summary is filled in as the run goes (configuration, training, evaluation, the figures),
//! so a failed run's summary holds what was known when it stopped; `status`, `exit_code` and,
//! on a failure, `error` are always there. Fields the run never reached are left out of the
//! JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How far a log-probability computed twice for the same row may differ: `abs + rel * |x|`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    /// By the profile's dtype: tight in f32 (the same row gives the same bits on the CPU
    /// backends, whatever the group), looser in half precision.
    pub fn for_dtype(dtype: &str) -> Tolerance {
        match dtype {
            "f32" => Tolerance { abs: 1e-4, rel: 1e-4 },
            _ => Tolerance { abs: 2e-2, rel: 1e-2 },
        }
    }

    pub fn allows(&self, a: f32, b: f32) -> bool {
        if a.is_finite() && b.is_finite() {
            (a - b).abs() <= self.abs + self.rel * a.abs().max(b.abs())
        } else {
            a == b
        }
    }
}

/// What the witness rows found: rows evaluated a second time, apart from their group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WitnessReport {
    pub rows: usize,
    pub positions_compared: usize,
    /// Largest |difference| of a log-probability between the two evaluations.
    pub max_abs_diff: f64,
    pub tolerance: Tolerance,
    /// The first difference beyond the tolerance: (row, position, first, second).
    pub first_failure: Option<(usize, usize, f32, f32)>,
}

impl WitnessReport {
    pub fn passed(&self) -> bool {
        self.first_failure.is_none()
    }
}

/// How the evaluation went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// In words: how the rows were evaluated.
    pub order: String,
    pub rows: usize,
    pub groups: usize,
    pub rows_per_group: usize,
    pub seconds: f64,
    /// The slowest evaluating process's start-to-Ready, and the slowest group's answers.
    pub ready_seconds_max: f64,
    pub group_seconds_max: f64,
    pub ready_limit_seconds: f64,
    pub group_limit_seconds: f64,
    /// The largest peak resident set of the evaluating processes, MiB.
    pub peak_rss_mb: Option<f64>,
    pub witnesses: WitnessReport,
}

/// The held-out score of a run, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldOut {
    Scored {
        bpb: f64,
        seconds: f64,
        tokens: u64,
        bytes: u64,
        rows: usize,
        documents: usize,
        split_documents: usize,
        split_tokens: u64,
        overlap_with_validation: usize,
        source: String,
        witnesses: WitnessReport,
    },
    None(String),
}

/// One run, as the harness reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSummary {
    /// `ok`, or what stopped the run (the harness's exit status name).
    pub status: String,
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,

    // What was run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// Where the device came from: `--device`, `BURN_DEVICE`, the profile's backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_batch_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hparams_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trainer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The sandbox every trainer process ran in, in words, or `none: why`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_allow_read: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autotune: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,

    // Training.
    /// How the training process ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trainer_exit: Option<String>,
    /// Counted training seconds, from the harness's clock (warm-up excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_allowance_seconds: Option<f64>,
    /// Optimizer steps (warm-up included), from the clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_steps: Option<u64>,
    /// Tokens handed out (warm-up included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// The trainer's own word, as `reported_by_trainer` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_params: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_by_trainer: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_model_bytes: Option<u64>,

    // Evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_limit_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_ready_limit_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_seconds: Option<f64>,
    /// Targets counted, their bytes and their nats: val_bpb's sums.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_nats: Option<f64>,
    /// Bytes the evaluating processes printed after their first validation token (not logged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trainer_output_withheld_bytes: Option<u64>,
    /// The witness rows of a run refused for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witnesses: Option<WitnessReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout: Option<HeldOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_bpb: Option<f64>,

    // The reference's summary block (with training_seconds, num_steps and depth above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_bpb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_vram_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu_percent: Option<f64>,
    #[serde(rename = "total_tokens_M", skip_serializing_if = "Option::is_none")]
    pub total_tokens_m: Option<f64>,
    #[serde(rename = "num_params_M", skip_serializing_if = "Option::is_none")]
    pub num_params_m: Option<f64>,

    // How the figures were measured.
    /// Where `peak_vram_mb` comes from: `device_pool`, `process_peak_rss`, `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_flops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_flops_source: Option<String>,
    /// The CPU's peak as measured (cores, lanes, FMA units, clock), on a CPU device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_peak: Option<Value>,
    /// Tokens handed out after warm-up, and their rate over the counted time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_tokens: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,

    /// The scorer's HMAC over everything else (`signature`), with `--sign-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl RunSummary {
    /// The JSON record, as written (and signed).
    pub fn to_record(&self) -> serde_json::Map<String, Value> {
        match serde_json::to_value(self).expect("a summary serializes") {
            Value::Object(m) => m,
            _ => unreachable!("a struct serializes to an object"),
        }
    }

    /// A summary JSON as the harness wrote it, or as an experiment command of the user's wrote
    /// it (see [`RunSummary::from_value`]); an error only when the text is not a JSON object.
    pub fn from_json(text: &str) -> Result<RunSummary, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        match Self::from_value(&value) {
            Some(summary) => Ok(summary),
            None => Err(serde::de::Error::custom("a run summary is a JSON object")),
        }
    }

    /// A summary record already parsed as JSON (one the runner stored, or one an experiment
    /// command wrote); None when it is not an object. Fields a reader does not know are
    /// ignored, so a newer harness's summary still reads; a known field whose value is not of
    /// its type reads as absent rather than losing the whole summary, since an experiment
    /// command of the user's may write anything under a key the harness also writes (say a
    /// `heldout` of its own shape beside the `heldout_bpb` the runner reads).
    pub fn from_value(record: &Value) -> Option<RunSummary> {
        let Value::Object(fields) = record else { return None };
        if let Ok(summary) = serde_json::from_value(record.clone()) {
            return Some(summary);
        }
        let well_typed = fields
            .iter()
            .filter(|(key, value)| {
                let alone = Value::Object([((*key).clone(), (*value).clone())].into_iter().collect());
                serde_json::from_value::<RunSummary>(alone).is_ok()
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        serde_json::from_value(Value::Object(well_typed)).ok()
    }

    /// The reference's summary block exactly as it prints it, ending with a newline (a missing
    /// figure prints as 0).
    pub fn block(&self) -> String {
        let f = |x: Option<f64>| x.unwrap_or(0.0);
        format!(
            "---\n\
             val_bpb:          {:.6}\n\
             training_seconds: {:.1}\n\
             total_seconds:    {:.1}\n\
             peak_vram_mb:     {:.1}\n\
             mfu_percent:      {:.2}\n\
             total_tokens_M:   {:.1}\n\
             num_steps:        {}\n\
             num_params_M:     {:.1}\n\
             depth:            {}\n",
            f(self.val_bpb),
            f(self.training_seconds),
            f(self.total_seconds),
            f(self.peak_vram_mb),
            f(self.mfu_percent),
            f(self.total_tokens_m),
            self.num_steps.unwrap_or(0),
            f(self.num_params_m),
            self.depth.unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary survives its JSON, its fields under the names the reference and the runner
    /// read, and a failed run's summary holds only what it reached.
    #[test]
    fn a_summary_reads_back_as_written_under_the_reference_names() {
        let s = RunSummary { status: "ok".into(), val_bpb: Some(0.9979), total_tokens_m: Some(499.6), num_params_m: Some(50.3), num_steps: Some(953), depth: Some(8), ..Default::default() };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"total_tokens_M\":499.6") && text.contains("\"num_params_M\":50.3"), "{text}");
        assert_eq!(RunSummary::from_json(&text).unwrap(), s);
        let record: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(record["val_bpb"].as_f64(), Some(0.9979));
        assert_eq!(record["num_steps"].as_f64(), Some(953.0));
        assert_eq!(record.get("no_such_key"), None);
        let failed = RunSummary { status: "usage".into(), exit_code: 2, error: Some("no device".into()), ..Default::default() };
        let record = failed.to_record();
        assert_eq!(record.keys().map(String::as_str).collect::<Vec<_>>(), ["error", "exit_code", "status"]);
        // A field this reader does not know is ignored.
        let newer = RunSummary::from_json(r#"{"status": "ok", "exit_code": 0, "a_future_field": 1}"#).unwrap();
        assert_eq!(newer.status, "ok");
    }

    #[test]
    fn the_block_is_the_references() {
        let s = RunSummary { val_bpb: Some(0.9979), training_seconds: Some(300.1), total_seconds: Some(325.9), peak_vram_mb: Some(45060.2), mfu_percent: Some(39.8), total_tokens_m: Some(499.6), num_steps: Some(953), num_params_m: Some(50.3), depth: Some(8), ..Default::default() };
        assert_eq!(
            s.block(),
            "---\nval_bpb:          0.997900\ntraining_seconds: 300.1\ntotal_seconds:    325.9\npeak_vram_mb:     45060.2\nmfu_percent:      39.80\ntotal_tokens_M:   499.6\nnum_steps:        953\nnum_params_M:     50.3\ndepth:            8\n"
        );
    }

    #[test]
    fn tolerance_is_tight_in_f32() {
        let t = Tolerance::for_dtype("f32");
        assert!(t.allows(-3.0, -3.0003));
        assert!(!t.allows(-3.0, -3.01));
        assert!(t.allows(f32::NEG_INFINITY, f32::NEG_INFINITY));
        assert!(!t.allows(f32::NAN, f32::NAN), "a NaN is never an answer");
        assert!(Tolerance::for_dtype("bf16").allows(-3.0, -3.04));
    }

    #[test]
    fn a_field_of_another_shape_reads_as_absent_and_keeps_the_rest() {
        let text = r#"{"val_bpb": 1.25, "heldout_bpb": 2.0, "heldout": {"scored": {"bpb": 2.0}}, "num_steps": "many"}"#;
        let s = RunSummary::from_json(text).unwrap();
        assert_eq!(s.val_bpb, Some(1.25));
        assert_eq!(s.heldout_bpb, Some(2.0));
        assert_eq!(s.heldout, None);
        assert_eq!(s.num_steps, None);
        assert!(RunSummary::from_json("[1, 2]").is_err());
        assert!(RunSummary::from_value(&serde_json::json!("text")).is_none());
    }
}
