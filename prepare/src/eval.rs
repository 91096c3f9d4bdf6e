//! `evaluate_bpb`: the one definition of the metric.
//!
//! The model is seen only through [`LogitsModel`]: it returns logits, and this module computes
//! the cross-entropy, masks the special tokens, sums the bytes and divides. A trainer cannot
//! change how it is scored.

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
    let device = logits.device();
    let logits = logits.reshape([b * t, v]);
    let target_ids: Vec<i64> = targets.iter().map(|&id| id as i64).collect();
    let target_ids = Tensor::<1, Int>::from_data(TensorData::new(target_ids, [b * t]), &device);
    let log_probs = log_softmax(logits, 1);
    let picked = log_probs.gather(1, target_ids.reshape([b * t, 1]));
    let nats: Vec<f32> = picked
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read log-probabilities back: {e:?}"))?;
    for (&target, &logp) in targets.iter().zip(&nats) {
        let bytes = token_bytes[target as usize];
        if bytes == 0 {
            continue;
        }
        anyhow::ensure!(
            logp.is_finite(),
            "model produced a non-finite log-probability ({logp}) for token {target}"
        );
        sums.nats -= logp as f64;
        sums.bytes += bytes as u64;
        sums.tokens += 1;
    }
    Ok(())
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
