//! The view of a trained model that evaluation needs: token ids in, logits out, one position
//! of every row at a time ([`LogitsModel::decoder`]), and the model saved for the fresh
//! processes that evaluate it ([`LogitsModel::save`]).

use std::path::Path;

use burn::prelude::*;

/// The narrow view of a trained model that evaluation needs.
pub trait LogitsModel {
    /// Next-token logits of whole rows (teacher-forced). `inputs`: `[batch, seq]` token ids.
    /// Returns `[batch, seq, vocab]`. The default [`LogitsModel::decoder`] is built on it.
    fn logits(&self, inputs: Tensor<2, Int>) -> Tensor<3>;

    /// A decoder for `rows` rows: evaluation feeds it one position of every row at a time and
    /// scores the logits it returns before it sends the next.
    ///
    /// The default recomputes the whole prefix with [`LogitsModel::logits`] at every position:
    /// correct for any causal model, but it costs about `seq / 2` teacher-forced passes, past
    /// the evaluation's time limit at the real profiles. A model with state to carry (a KV
    /// cache) overrides it.
    fn decoder(&self, rows: usize) -> Box<dyn Decoder + '_> {
        Box::new(Recompute { model: self, rows, prefix: None })
    }

    /// Writes into `dir` what the trainer's `load` needs to rebuild this model: each group of
    /// evaluation rows is answered by a fresh process that starts from it.
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        anyhow::bail!(
            "this model cannot be saved into {}: implement LogitsModel::save and the trainer's load (every evaluation group is answered by a fresh process that loads the saved model)",
            dir.display()
        )
    }
}

/// Evaluation's side of a model: fed one position of every row at a time.
pub trait Decoder {
    /// `tokens` `[rows]`: the next position of every row. Returns `[rows, vocab]`: the logits
    /// of the position after it, given everything fed so far.
    fn step(&mut self, tokens: Tensor<1, Int>) -> Tensor<2>;
}

/// The default [`Decoder`]: the rows fed so far, run through [`LogitsModel::logits`] whole at
/// every position.
pub struct Recompute<'a, M: ?Sized> {
    model: &'a M,
    rows: usize,
    /// `[rows, positions fed]`.
    prefix: Option<Tensor<2, Int>>,
}

impl<M: LogitsModel + ?Sized> Decoder for Recompute<'_, M> {
    fn step(&mut self, tokens: Tensor<1, Int>) -> Tensor<2> {
        let column = tokens.reshape([self.rows, 1]);
        let prefix = match self.prefix.take() {
            Some(p) => Tensor::cat(vec![p, column], 1),
            None => column,
        };
        let logits = self.model.logits(prefix.clone());
        let [b, t, v] = logits.dims();
        self.prefix = Some(prefix);
        logits.slice(s![.., t - 1..t, ..]).reshape([b, v])
    }
}
