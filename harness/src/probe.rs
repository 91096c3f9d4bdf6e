//! The causality probe: a trained model must not see the future.
//!
//! A model whose logits at position `t` depend on tokens after `t` would score an impossibly
//! low val_bpb (it reads the answer). Before scoring, the harness takes a sample of validation
//! rows, computes the logits, changes every token at positions `>= T/2` to a different id, and
//! computes the logits again. The logits at positions `< T/2` must not move beyond float noise:
//! `|a - b| <= ABS_TOL + REL_TOL * |a|`. Position `T/2 - 1` predicts token `T/2`, so even a
//! model that peeks a single step ahead is caught.

use burn::prelude::*;
use prepare::eval::LogitsModel;

/// Absolute tolerance of the comparison.
pub const ABS_TOL: f32 = 1e-3;
/// Relative tolerance of the comparison.
pub const REL_TOL: f32 = 1e-3;
/// Validation rows the harness probes with.
pub const PROBE_ROWS: usize = 2;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeReport {
    /// Rows probed.
    pub rows: usize,
    /// Positions per row.
    pub seq_len: usize,
    /// First position whose tokens were changed (`T/2`).
    pub cut: usize,
    /// Largest `|a - b|` over the logits before the cut.
    pub max_abs_diff: f64,
    /// Positions (row, position) before the cut whose logits moved beyond the tolerance.
    pub violations: usize,
    /// The first such position.
    pub first_violation: Option<(usize, usize)>,
}

impl ProbeReport {
    /// True when no earlier logit moved.
    pub fn is_causal(&self) -> bool {
        self.violations == 0
    }

    /// The message printed when the probe fails.
    pub fn refusal(&self) -> String {
        let (row, pos) = self.first_violation.unwrap_or((0, 0));
        format!(
            "CAUSALITY VIOLATION: the model's logits at positions before {cut} changed when only the \
             tokens at positions >= {cut} were changed ({n} of {total} positions moved; first at row \
             {row}, position {pos}; max |diff| {d:.3e}, tolerance {ABS_TOL:e} + {REL_TOL:e}*|x|). \
             A model that reads future tokens is refused: its val_bpb would be meaningless.",
            cut = self.cut,
            n = self.violations,
            total = self.rows * self.cut,
            d = self.max_abs_diff,
        )
    }
}

/// The token put at position `pos` in place of `id`: always a different id (`vocab >= 2`).
pub fn replacement_token(id: u32, pos: usize, vocab: usize) -> u32 {
    let vocab = vocab as u64;
    let shift = 1 + (pos as u64 * 7919 + 104_729) % (vocab - 1);
    ((id as u64 + shift) % vocab) as u32
}

/// Runs the probe on `inputs` (`rows * seq_len` token ids, row-major).
pub fn check_causality(
    model: &dyn LogitsModel,
    inputs: &[u32],
    rows: usize,
    seq_len: usize,
    vocab: usize,
    device: &Device,
) -> anyhow::Result<ProbeReport> {
    anyhow::ensure!(rows >= 1 && seq_len >= 2, "the probe needs at least one row of two positions");
    anyhow::ensure!(vocab >= 2, "the probe needs a vocabulary of at least two tokens");
    anyhow::ensure!(inputs.len() == rows * seq_len, "probe inputs: expected {} ids, got {}", rows * seq_len, inputs.len());
    let cut = seq_len / 2;
    let changed: Vec<u32> = inputs
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let pos = i % seq_len;
            if pos >= cut { replacement_token(id, pos, vocab) } else { id }
        })
        .collect();
    let before = prefix_logits(model, inputs, rows, seq_len, vocab, cut, device)?;
    let after = prefix_logits(model, &changed, rows, seq_len, vocab, cut, device)?;
    let mut report = ProbeReport { rows, seq_len, cut, max_abs_diff: 0.0, violations: 0, first_violation: None };
    for row in 0..rows {
        for pos in 0..cut {
            let at = (row * cut + pos) * vocab;
            let mut moved = false;
            for (&a, &b) in before[at..at + vocab].iter().zip(&after[at..at + vocab]) {
                if a.is_finite() && b.is_finite() {
                    let diff = (a - b).abs();
                    report.max_abs_diff = report.max_abs_diff.max(diff as f64);
                    moved |= diff > ABS_TOL + REL_TOL * a.abs();
                } else if !(a == b || (a.is_nan() && b.is_nan())) {
                    // A logit that turns non-finite, or an infinity that changes, moved.
                    report.max_abs_diff = f64::INFINITY;
                    moved = true;
                }
            }
            if moved {
                report.violations += 1;
                report.first_violation.get_or_insert((row, pos));
            }
        }
    }
    Ok(report)
}

/// Logits at positions `< cut`, `[rows, cut, vocab]` row-major, on the host.
fn prefix_logits(
    model: &dyn LogitsModel,
    ids: &[u32],
    rows: usize,
    seq_len: usize,
    vocab: usize,
    cut: usize,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, seq_len]), device);
    let logits = model.logits(inputs);
    let dims = logits.dims();
    anyhow::ensure!(
        dims == [rows, seq_len, vocab],
        "the model returned logits of shape {dims:?} for inputs [{rows}, {seq_len}] (expected [{rows}, {seq_len}, {vocab}])"
    );
    logits
        .slice(s![.., 0..cut, ..])
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read the probe's logits back: {e:?}"))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;

    const V: usize = 16;

    /// Logits from host-side code: `f(ids of one row, position) -> logits`.
    struct HostModel<F: Fn(&[i64], usize) -> Vec<f32>> {
        f: F,
        device: Device,
    }

    impl<F: Fn(&[i64], usize) -> Vec<f32>> LogitsModel for HostModel<F> {
        fn logits(&self, inputs: Tensor<2, Int>) -> Tensor<3> {
            let [b, t] = inputs.dims();
            let ids: Vec<i64> = inputs.into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
            let mut out = Vec::with_capacity(b * t * V);
            for row in ids.chunks(t) {
                for pos in 0..t {
                    out.extend((self.f)(row, pos));
                }
            }
            Tensor::<3>::from_data(TensorData::new(out, [b, t, V]), &self.device)
        }
    }

    /// Honest: position t sees tokens 0..=t (a decayed bag of the prefix).
    fn honest(row: &[i64], pos: usize) -> Vec<f32> {
        let mut l = vec![0.0f32; V];
        for (s, &id) in row[..=pos].iter().enumerate() {
            l[id as usize] += 1.0 / (1 + pos - s) as f32;
        }
        l
    }

    /// Peeking: position t also sees token t + 1 (the answer).
    fn peeking(row: &[i64], pos: usize) -> Vec<f32> {
        let mut l = honest(row, pos);
        if pos + 1 < row.len() {
            l[row[pos + 1] as usize] += 5.0;
        }
        l
    }

    fn inputs(rows: usize, t: usize) -> Vec<u32> {
        (0..rows * t).map(|i| ((i * 5 + 3) % V) as u32).collect()
    }

    #[test]
    fn honest_model_passes() {
        let device = Device::flex();
        let model = HostModel { f: honest, device: device.clone() };
        let report = check_causality(&model, &inputs(2, 8), 2, 8, V, &device).unwrap();
        assert!(report.is_causal(), "{report:?}");
        assert_eq!(report.max_abs_diff, 0.0);
        assert_eq!(report.cut, 4);
    }

    #[test]
    fn model_peeking_one_token_ahead_is_caught() {
        let device = Device::flex();
        let model = HostModel { f: peeking, device: device.clone() };
        let report = check_causality(&model, &inputs(2, 8), 2, 8, V, &device).unwrap();
        assert!(!report.is_causal());
        // Only position T/2 - 1 sees a changed token.
        assert_eq!(report.violations, 2);
        assert_eq!(report.first_violation, Some((0, 3)));
        assert!(report.refusal().contains("CAUSALITY VIOLATION"));
    }

    #[test]
    fn model_reading_the_last_token_is_caught() {
        let device = Device::flex();
        let model = HostModel {
            f: |row: &[i64], pos: usize| {
                let mut l = honest(row, pos);
                l[0] += row[row.len() - 1] as f32 * 1e-2;
                l
            },
            device: device.clone(),
        };
        let report = check_causality(&model, &inputs(1, 9), 1, 9, V, &device).unwrap();
        assert_eq!(report.violations, 4, "{report:?}");
    }

    #[test]
    fn float_noise_is_tolerated() {
        let device = Device::flex();
        let model = HostModel {
            f: |row: &[i64], pos: usize| {
                let mut l = honest(row, pos);
                // A 1e-5 wobble that depends on the future: below the tolerance.
                l[1] += 1e-5 * row[row.len() - 1] as f32;
                l
            },
            device: device.clone(),
        };
        assert!(check_causality(&model, &inputs(2, 8), 2, 8, V, &device).unwrap().is_causal());
    }

    #[test]
    fn wrong_logit_shape_is_an_error() {
        let device = Device::flex();
        let model = HostModel { f: honest, device: device.clone() };
        let err = check_causality(&model, &inputs(1, 8), 1, 8, V + 1, &device).unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
    }

    #[test]
    fn replacement_always_differs() {
        for vocab in [2usize, 3, 16, 8192] {
            for id in 0..vocab.min(50) as u32 {
                for pos in 0..40 {
                    let r = replacement_token(id, pos, vocab);
                    assert!(r != id && (r as usize) < vocab);
                }
            }
        }
    }
}
