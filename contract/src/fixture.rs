//! A trainer for tests: a bigram model counted from the training batches, honest and quick (a
//! run takes about a second), that speaks the protocol with [`crate::channel::Channel`]: it
//! trains and saves its counts, or loads them and answers one group of evaluation rows. The
//! harness's red-team fixture and the runner's loop tests build their attacks around it.

use std::path::Path;

use crate::channel::Channel;
use crate::wire::{Done, ModelInfo, StepReport, Task, WireError};

/// The file the counts are saved in, inside the Hello's `model_dir`.
pub const MODEL_FILE: &str = "bigram.bin";

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

    /// Logits after the last token of every row, `[rows, vocab]` row-major: the answer to one
    /// evaluation position.
    pub fn next_logits(&self, tokens: &[u16]) -> Vec<f32> {
        let v = self.vocab;
        let mut out = vec![0f32; tokens.len() * v];
        for (i, &id) in tokens.iter().enumerate() {
            self.logits(id, &mut out[i * v..(i + 1) * v]);
        }
        out
    }

    /// Writes the counts into `dir`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes: Vec<u8> = self.counts.iter().flat_map(|c| c.to_le_bytes()).collect();
        std::fs::write(dir.join(MODEL_FILE), bytes)
    }

    /// Reads the counts [`Bigram::save`] wrote for a vocabulary of `vocab`.
    pub fn load(dir: &Path, vocab: usize) -> std::io::Result<Bigram> {
        let path = dir.join(MODEL_FILE);
        let bytes = std::fs::read(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if bytes.len() != vocab * vocab * 4 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} holds {} bytes, not the {} of a {vocab}-token bigram", MODEL_FILE, bytes.len(), vocab * vocab * 4)));
        }
        Ok(Bigram { vocab, counts: bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect() })
    }
}

/// `log(sum(exp(row)))`.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
}

/// The fixture trainer's whole life: trains and saves (the training process), or loads and
/// answers (an evaluating process), as the harness's Hello says.
pub fn serve(ch: &mut Channel, rows: usize, each_step: impl FnMut(u64, &mut Bigram)) -> Result<(), WireError> {
    match ch.hello().task {
        Task::Train => train(ch, rows, each_step).map(|_| ()),
        Task::Evaluate { .. } => {
            let model = load(ch)?;
            answer(ch, &model)
        }
    }
}

/// Trains on every step the harness hands out (`rows` rows a step), calling `each_step` after
/// each one; when the budget is spent, saves the model and says training is done.
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
    model.save(Path::new(&ch.hello().model_dir))?;
    ch.training_done(Done::default())?;
    Ok(model)
}

/// The model the training process saved.
pub fn load(ch: &Channel) -> Result<Bigram, WireError> {
    Ok(Bigram::load(Path::new(&ch.hello().model_dir), ch.hello().vocab_size)?)
}

/// Answers the harness's evaluation honestly: Ready, then each position's next-token logits.
pub fn answer(ch: &mut Channel, model: &Bigram) -> Result<(), WireError> {
    ch.ready()?;
    while let Some(tokens) = ch.next_tokens()? {
        ch.answer(&model.next_logits(&tokens))?;
    }
    Ok(())
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
        let next = m.next_logits(&[0, 2]);
        assert_eq!(next.len(), 8);
        assert_eq!(&next[..4], &out);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let back = Bigram::load(dir.path(), 4).unwrap();
        assert_eq!(back.next_logits(&[0, 2]), next, "a saved model answers as the one that was saved");
        assert!(Bigram::load(dir.path(), 5).is_err(), "a file of another vocabulary is refused");
    }
}
