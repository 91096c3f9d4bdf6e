//! A trainer for tests: a bigram model counted from the training batches, honest and quick (a
//! run takes about a second), that speaks the protocol with [`crate::child::Channel`]. The
//! harness's red-team fixture and the runner's loop tests build their attacks around it.

use crate::child::{Channel, EvalRequest};
use crate::wire::{Done, EvalMode, ModelInfo, StepReport, WireError};

/// Next-token log-probabilities from bigram counts (add-one smoothing).
pub struct Bigram {
    pub vocab: usize,
    counts: Vec<f32>,
}

impl Bigram {
    pub fn new(vocab: usize) -> Self {
        Bigram { vocab, counts: vec![0.0; vocab * vocab] }
    }

    /// Counts the bigrams of `row`.
    pub fn learn(&mut self, row: &[u16]) {
        for w in row.windows(2) {
            if (w[0] as usize) < self.vocab && (w[1] as usize) < self.vocab {
                self.counts[w[0] as usize * self.vocab + w[1] as usize] += 1.0;
            }
        }
    }

    /// The logits (log-probabilities) of the token after `prev`, into `out` (`vocab` values).
    pub fn logits(&self, prev: u16, out: &mut [f32]) {
        let row = &self.counts[prev as usize * self.vocab..(prev as usize + 1) * self.vocab];
        let total: f32 = row.iter().sum::<f32>() + self.vocab as f32;
        for (o, c) in out.iter_mut().zip(row) {
            *o = ((c + 1.0) / total).ln();
        }
    }

    /// Logits of a batch of inputs, `[rows, seq, vocab]` row-major.
    pub fn batch_logits(&self, inputs: &[u16], rows: usize, seq: usize) -> Vec<f32> {
        let v = self.vocab;
        let mut out = vec![0f32; rows * seq * v];
        for (i, &id) in inputs.iter().enumerate().take(rows * seq) {
            self.logits(id, &mut out[i * v..(i + 1) * v]);
        }
        out
    }
}

/// `log(sum(exp(row)))`.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
}

/// Trains on every step the harness hands out (`rows` rows a step), calling `each_step` after
/// each one; returns the model when the budget is spent.
pub fn train(ch: &mut Channel, rows: usize, mut each_step: impl FnMut(u64, &mut Bigram)) -> Result<Bigram, WireError> {
    let vocab = ch.hello().vocab_size;
    let mut model = Bigram::new(vocab);
    ch.send_model(ModelInfo { num_params: (vocab * vocab) as u64, flops_per_token: 2.0, depth: 1 })?;
    let mut report = None;
    while let Some(batch) = ch.next_step(rows, report)? {
        for r in 0..batch.rows {
            model.learn(batch.row(r));
        }
        each_step(batch.step, &mut model);
        let loss = 3.0 / (1.0 + batch.step as f64);
        println!("step {:05} | loss: {loss:.6}", batch.step);
        report = Some(StepReport { loss, lr_multiplier: 1.0 });
    }
    ch.training_done(Done::default())?;
    Ok(model)
}

/// Answers the harness's evaluation honestly, in the mode it asked for.
pub fn answer(ch: &mut Channel, model: &Bigram) -> Result<(), WireError> {
    let (v, mode) = (model.vocab, ch.hello().eval_mode);
    let mut last = Vec::new();
    let mut seq = 0;
    loop {
        match ch.next_eval()? {
            EvalRequest::Quit => return Ok(()),
            EvalRequest::Batch(b) => {
                let logits = model.batch_logits(&b.inputs, b.rows, b.seq_len);
                match mode {
                    EvalMode::Full => ch.answer_full(&logits)?,
                    EvalMode::Summary => {
                        let (lse, next, fin) = summarize(&logits, &b.inputs, b.rows, b.seq_len, v);
                        ch.answer_summary(lse, next, fin)?;
                    }
                }
                last = logits;
                seq = b.seq_len;
            }
            EvalRequest::Reveal(ps) => {
                let out = ps.iter().flat_map(|p| {
                    let at = (p.row as usize * seq + p.pos as usize) * v;
                    last[at..at + v].iter().copied()
                });
                ch.send_vectors(out.collect())?;
            }
        }
    }
}

/// The summary answer of a batch of logits: per-position log-sum-exp, next-input logits, and
/// the last position's logits.
pub fn summarize(logits: &[f32], inputs: &[u16], rows: usize, seq: usize, v: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let lse = logits.chunks(v).map(log_sum_exp).collect();
    let mut next = Vec::with_capacity(rows * (seq - 1));
    let mut last = Vec::with_capacity(rows * v);
    for r in 0..rows {
        for p in 0..seq - 1 {
            next.push(logits[(r * seq + p) * v + inputs[r * seq + p + 1] as usize]);
        }
        last.extend_from_slice(&logits[(r * seq + seq - 1) * v..(r * seq + seq) * v]);
    }
    (lse, next, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigram_logits_are_normalised_and_learn_the_counts() {
        let mut m = Bigram::new(4);
        m.learn(&[0, 1, 0, 1, 0, 2]);
        let mut out = [0f32; 4];
        m.logits(0, &mut out);
        assert!((log_sum_exp(&out)).abs() < 1e-6, "log-probabilities sum to 1");
        assert!(out[1] > out[2] && out[2] > out[3]);
        let (lse, next, last) = summarize(&m.batch_logits(&[0, 1, 0], 1, 3), &[0, 1, 0], 1, 3, 4);
        assert_eq!((lse.len(), next.len(), last.len()), (3, 2, 4));
    }
}
