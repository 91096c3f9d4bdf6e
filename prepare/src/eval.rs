//! The one definition of the metric: [`BpbSums::add`] counts a target's log-probability
//! (special tokens masked), [`BpbSums::bpb`] divides by the bytes.
//!
//! The harness scores the trainer's logits with it across the process boundary; the model is
//! seen only through [`LogitsModel`] (token ids in, logits out). [`evaluate_bpb`] is the same
//! metric in one process, for code that has the data and the model together (tests).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::data::PreparedData;
use crate::loader::PackedLoader;
use crate::profile::PlatformProfile;

/// The narrow view of a trained model that evaluation needs.
pub trait LogitsModel {
    /// Next-token logits. `inputs`: `[batch, seq]` token ids. Returns `[batch, seq, vocab]`.
    fn logits(&self, inputs: Tensor<2, Int>) -> Tensor<3>;
}

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
    row[target as usize] - crate::fastmath::log_sum_exp(row)
}

/// Adds one batch to `sums`: per-token cross-entropy from `logits` `[B, T, V]` against
/// `targets` (row-major `B * T`), counting only targets whose `token_bytes` is non-zero.
pub fn accumulate_batch(
    sums: &mut BpbSums,
    logits: Tensor<3>,
    targets: &[u32],
    token_bytes: &[u32],
) -> anyhow::Result<()> {
    let [b, t, v] = logits.dims();
    anyhow::ensure!(
        b * t == targets.len(),
        "model returned logits for {b}x{t} positions but the batch has {} targets",
        targets.len()
    );
    anyhow::ensure!(
        v == token_bytes.len(),
        "model returned {v} logits per position but the vocabulary has {} tokens",
        token_bytes.len()
    );
    if let Some(&bad) = targets.iter().find(|&&id| id as usize >= v) {
        anyhow::bail!("target token {bad} lies outside the vocabulary of {v}");
    }
    let mut batch = BpbSums::default();
    for (&target, &logp) in targets.iter().zip(&target_log_probs(logits.reshape([b * t, v]), targets)?) {
        batch.add(target, logp, token_bytes)?;
    }
    sums.merge(&batch);
    Ok(())
}

/// `log softmax(logits[i])[targets[i]]` for each row of `logits` `[N, V]`.
///
/// On flex the rows are read in place and reduced on every core with a vectorised `exp`
/// ([`crate::fastmath`]); Burn's `log_softmax` there is ~6 passes over `[N, V]` with a scalar
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

/// val_bpb of `model` on the pinned validation shard, with the evaluation size of `profile`.
///
/// Every call scores the same tokens: a fresh validation loader is built each time.
pub fn evaluate_bpb(
    model: &dyn LogitsModel,
    data: &PreparedData,
    profile: &PlatformProfile,
    device: &Device,
) -> anyhow::Result<BpbSums> {
    let batch = profile.eval_batch_size;
    let seq = profile.seq_len;
    let steps = profile.eval_steps();
    anyhow::ensure!(steps > 0, "the profile's eval_tokens give zero evaluation batches");
    let mut loader = PackedLoader::validation(data, batch, seq)?;
    let token_bytes = data.token_bytes();
    let mut sums = BpbSums::default();
    for _ in 0..steps {
        let rows = loader.next_batch()?;
        let inputs = rows.inputs_tensor(device);
        let logits = model.logits(inputs);
        accumulate_batch(&mut sums, logits, &rows.targets, token_bytes)?;
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
        let logits = Tensor::<3>::zeros([1, 2, 5], &device);
        let mut sums = BpbSums::default();
        let err = accumulate_batch(&mut sums, logits, &[1, 5], &[1; 5]).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        assert_eq!(sums, BpbSums::default());
    }
}
