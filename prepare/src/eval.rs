//! The one definition of the metric: [`BpbSums::add`] counts a target's log-probability
//! (special tokens masked), [`BpbSums::bpb`] divides by the bytes.
//!
//! The harness scores the trainer's logits with it across the process boundary; the model is
//! seen only through `experiment::LogitsModel`: token ids in, logits out, one position of every
//! row at a time, so no target reaches the model before its logits are scored. [`evaluate_bpb`]
//! is the same evaluation in one process, for code that has the data and the model together
//! (tests).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use experiment::LogitsModel;
#[cfg(test)]
use std::path::Path;

use crate::data::PreparedData;
use crate::loader::PackedLoader;
use crate::profile::PlatformProfile;

/// Sums that make up val_bpb; kept apart so that tests can check each one.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BpbSums {
    /// Cross-entropy of the counted targets, in nats.
    pub nats: f64,
    /// UTF-8 bytes of the counted targets.
    pub bytes: u64,
    /// Targets counted (specials excluded).
    pub tokens: u64,
}

impl BpbSums {
    /// Bits per byte: `nats / (ln 2 * bytes)`.
    pub fn bpb(&self) -> f64 {
        self.nats / (std::f64::consts::LN_2 * self.bytes as f64)
    }

    /// Adds one position: the model's log-probability of its target. Targets without bytes
    /// (the special tokens) are not counted; a non-finite log-probability of a counted target
    /// is an error.
    pub fn add(&mut self, target: u32, log_prob: f32, token_bytes: &[u32]) -> anyhow::Result<()> {
        let bytes = *token_bytes
            .get(target as usize)
            .ok_or_else(|| anyhow::anyhow!("target token {target} lies outside the vocabulary of {}", token_bytes.len()))?;
        if bytes == 0 {
            return Ok(());
        }
        anyhow::ensure!(log_prob.is_finite(), "model produced a non-finite log-probability ({log_prob}) for token {target}");
        self.nats -= log_prob as f64;
        self.bytes += bytes as u64;
        self.tokens += 1;
        Ok(())
    }

    /// Adds `other` (sums of another batch or row).
    pub fn merge(&mut self, other: &BpbSums) {
        self.nats += other.nats;
        self.bytes += other.bytes;
        self.tokens += other.tokens;
    }
}

/// `log softmax(row)[target]` for one row of logits on the host.
pub fn log_prob(row: &[f32], target: u32) -> f32 {
    row[target as usize] - experiment::fastmath::log_sum_exp(row)
}

/// Adds one evaluation position of every row to `sums`: the cross-entropy of `logits`
/// `[rows, V]` against `targets` (one per row), counting only targets whose `token_bytes` is
/// non-zero.
pub fn accumulate_step(sums: &mut BpbSums, logits: Tensor<2>, targets: &[u32], token_bytes: &[u32]) -> anyhow::Result<()> {
    let [n, v] = logits.dims();
    anyhow::ensure!(n == targets.len(), "model returned logits for {n} rows but the step has {} targets", targets.len());
    anyhow::ensure!(v == token_bytes.len(), "model returned {v} logits per position but the vocabulary has {} tokens", token_bytes.len());
    if let Some(&bad) = targets.iter().find(|&&id| id as usize >= v) {
        anyhow::bail!("target token {bad} lies outside the vocabulary of {v}");
    }
    let mut step = BpbSums::default();
    for (&target, &logp) in targets.iter().zip(&target_log_probs(logits, targets)?) {
        step.add(target, logp, token_bytes)?;
    }
    sums.merge(&step);
    Ok(())
}

/// `log softmax(logits[i])[targets[i]]` for each row of `logits` `[N, V]`.
///
/// On flex the rows are read in place and reduced on every core with a vectorised `exp`
/// (`experiment::fastmath`); Burn's `log_softmax` there is ~6 passes over `[N, V]` with a scalar
/// `exp` on one core. Other backends keep the tensor formulation on their device. Both compute
/// `z_t - (m + ln sum_j e^(z_j - m))`, `m` the row maximum, in f32 (tested to agree).
fn target_log_probs(logits: Tensor<2>, targets: &[u32]) -> anyhow::Result<Vec<f32>> {
    #[cfg(feature = "flex")]
    if let Ok(p) = logits.clone().try_into_primitive::<burn::backend::Flex>() {
        if p.dtype() == burn::tensor::DType::F32 {
            let p = if p.as_slice::<f32>().is_some() { p } else { p.to_contiguous() };
            let rows = p.as_slice::<f32>().expect("contiguous after to_contiguous");
            return Ok(host_target_log_probs(rows, logits.dims()[1], targets));
        }
    }
    tensor_target_log_probs(logits, targets)
}

/// [`target_log_probs`] with Burn's tensor ops, on the logits' device.
fn tensor_target_log_probs(logits: Tensor<2>, targets: &[u32]) -> anyhow::Result<Vec<f32>> {
    let device = logits.device();
    let n = targets.len();
    let target_ids: Vec<i64> = targets.iter().map(|&id| id as i64).collect();
    let target_ids = Tensor::<1, Int>::from_data(TensorData::new(target_ids, [n]), &device);
    let picked = log_softmax(logits, 1).gather(1, target_ids.reshape([n, 1]));
    picked
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read log-probabilities back: {e:?}"))
}

/// [`target_log_probs`] of row-major host logits, rows of `v`, on every core.
fn host_target_log_probs(rows: &[f32], v: usize, targets: &[u32]) -> Vec<f32> {
    use rayon::prelude::*;
    rows.par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| log_prob(row, t))
        .collect()
}

/// val_bpb of `model` on the pinned validation shard, with the evaluation size of `profile`,
/// as the harness evaluates it: each group of `eval_batch_size` rows through a fresh decoder,
/// one position at a time.
///
/// Every call scores the same tokens: a fresh validation loader is built each time.
pub fn evaluate_bpb(model: &dyn LogitsModel, data: &PreparedData, profile: &PlatformProfile, device: &Device) -> anyhow::Result<BpbSums> {
    let rows = profile.eval_batch_size;
    let seq = profile.seq_len;
    let groups = profile.eval_steps();
    anyhow::ensure!(groups > 0, "the profile's eval_tokens give zero evaluation groups");
    let mut loader = PackedLoader::validation(data, rows, seq)?;
    let token_bytes = data.token_bytes();
    let mut sums = BpbSums::default();
    for _ in 0..groups {
        let group = loader.next_batch()?;
        let mut decoder = model.decoder(rows);
        for p in 0..seq {
            let column = |ids: &[u32]| -> Vec<u32> { (0..rows).map(|r| ids[r * seq + p]).collect() };
            let tokens: Vec<i64> = column(&group.inputs).into_iter().map(i64::from).collect();
            let logits = decoder.step(Tensor::<1, Int>::from_data(TensorData::new(tokens, [rows]), device));
            accumulate_step(&mut sums, logits, &column(&group.targets), token_bytes)?;
        }
    }
    anyhow::ensure!(sums.bytes > 0, "the validation batches held no countable bytes");
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The host path and Burn's `log_softmax` give the same log-probabilities, on logits of the
    /// size and spread evaluation sees, and on a strided view.
    #[test]
    fn host_log_probs_match_burn_log_softmax() {
        let device = Device::flex();
        device.seed(7);
        let (n, v) = (64, 8192);
        let logits = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 5.0), &device);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 977) % v as u32).collect();
        let want = tensor_target_log_probs(logits.clone(), &targets).unwrap();
        let got = target_log_probs(logits.clone(), &targets).unwrap();
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 2e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        // A transposed view (strided rows) is read correctly too.
        let strided = Tensor::<2>::random([v, n], Distribution::Normal(0.0, 5.0), &device).transpose();
        let want = tensor_target_log_probs(strided.clone(), &targets).unwrap();
        let got = target_log_probs(strided, &targets).unwrap();
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= 2e-5 * a.abs().max(1.0), "strided: {a} vs {b}");
        }
    }

    /// A target id outside the vocabulary is an error, not a panic or a silent miss.
    #[test]
    fn target_outside_the_vocabulary_is_an_error() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([2, 5], &device);
        let mut sums = BpbSums::default();
        let err = accumulate_step(&mut sums, logits, &[1, 5], &[1; 5]).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        assert_eq!(sums, BpbSums::default());
    }

    /// A causal toy model: the logit of token j at position t is a function of the tokens up
    /// to t (their sum, weighted by position) and of j.
    struct Causal {
        vocab: usize,
    }

    impl LogitsModel for Causal {
        fn logits(&self, inputs: Tensor<2, Int>) -> Tensor<3> {
            let [b, t] = inputs.dims();
            let ids = inputs.into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
            let mut out = Vec::with_capacity(b * t * self.vocab);
            for r in 0..b {
                let mut acc = 0f32;
                for p in 0..t {
                    acc += (ids[r * t + p] as f32 + 1.0) * (p as f32 + 1.0);
                    out.extend((0..self.vocab).map(|j| (acc * 0.37 + j as f32 * 1.3).sin() * 3.0));
                }
            }
            Tensor::from_data(TensorData::new(out, [b, t, self.vocab]), &Device::flex())
        }
    }

    /// The default decoder gives, one position at a time, the logits the whole rows give at
    /// once: a model without a cached path still evaluates, to the same numbers.
    #[test]
    fn the_default_decoder_recomputes_the_prefix_to_the_same_logits() {
        let device = Device::flex();
        let model = Causal { vocab: 11 };
        let (b, t) = (3, 6);
        let ids: Vec<i64> = (0..(b * t) as i64).map(|i| (i * 7 + 3) % 11).collect();
        let whole = model.logits(Tensor::from_data(TensorData::new(ids.clone(), [b, t]), &device));
        let mut decoder = model.decoder(b);
        for p in 0..t {
            let column: Vec<i64> = (0..b).map(|r| ids[r * t + p]).collect();
            let step = decoder.step(Tensor::from_data(TensorData::new(column, [b]), &device));
            assert_eq!(step.dims(), [b, 11]);
            let want = whole.clone().slice(s![.., p..p + 1, ..]).reshape([b, 11]);
            let diff = (step - want).abs().max().into_scalar::<f32>();
            assert_eq!(diff, 0.0, "position {p}");
        }
    }

    /// A model without `save` says what to implement.
    #[test]
    fn a_model_without_save_says_what_to_implement() {
        let err = Causal { vocab: 3 }.save(Path::new("/nowhere")).unwrap_err().to_string();
        assert!(err.contains("LogitsModel::save") && err.contains("load"), "{err}");
    }
}
