//! Evaluation across the process boundary, sealed by its order: no trainer process ever holds a
//! validation token before the logits that predict it are scored.
//!
//! **The rows.** The scored rows are the reference's: `eval_tokens / seq_len` rows of the
//! pinned validation shard, packed as the reference packs them, in groups of the profile's
//! `eval_batch_size` rows. Their loss is summed row by row in that order.
//!
//! **One position at a time.** Each group is answered by a fresh trainer process that loads
//! the model the training process saved, has seen no other validation token and has nothing
//! writable that outlives it. The harness sends it position 0 of every row of the group, then
//! waits for the logits of position 1; it copies every row's logits out of the shared region and
//! scores them against the targets it alone holds, and only then sends position 1, whose tokens
//! are those targets. A target therefore reaches the trainer only after the logits that predict
//! it are fixed: memory, caching, hashing of prefixes or a thread that keeps state can recall
//! only tokens whose predictions were already scored.
//!
//! **Witness rows.** A process sees every row of its group up to the current position, so a
//! model could learn from the group as it is revealed (a cache of the other rows' text, or
//! training on it) and predict each row better than the saved model alone does. After the
//! groups, rows drawn at random from the kernel's generator are evaluated again, together
//! and apart from the rest, by one more fresh process: a row's log-probabilities must not depend
//! on the rows it was evaluated with, so they must agree with the first time, position by
//! position, within the dtype's tolerance. What this leaves is written down in
//! docs/threat-model.md.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prepare::data::PreparedData;
use prepare::eval::{BpbSums, log_prob};
use prepare::held_out;
use prepare::loader::PackedLoader;
use rayon::prelude::*;
use contract::random::Unpredictable;
use contract::summary::{Tolerance, WitnessReport};
use contract::wire::{Failure, ToHarness, ToTrainer, WireError};

use crate::trainer_process::{Scratch, TrainerProcess};

/// How long an evaluating process may take.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EvalLimits {
    /// From its start to Ready: starting and loading the saved model.
    pub ready: Duration,
    /// From Ready to the last position's logits.
    pub group: Duration,
}

/// The message of a run refused for its witness rows.
pub fn refusal(report: &WitnessReport) -> String {
    let (row, pos, a, b) = report.first_failure.unwrap_or((0, 0, 0.0, 0.0));
    format!(
        "EVALUATION CHECK FAILED: a row's predictions depend on the other rows it was evaluated with (the model learns from its group as it is revealed): witness row {row}, position {pos}: log-probability {a} with its group, {b} apart (tolerance {:e} + {:e}*|x|). The run is refused: its val_bpb is not the saved model's.",
        report.tolerance.abs, report.tolerance.rel
    )
}

/// A started evaluating process, with the scratch folder that is its only writable place.
pub struct Launched {
    pub process: TrainerProcess,
    pub scratch: Scratch,
}

/// Starts a fresh evaluating process for a group of this many rows (its Hello sent).
pub type Launcher<'a> = dyn Fn(usize) -> Result<Launched, String> + 'a;

/// Why evaluation stopped.
#[derive(Debug)]
pub enum EvalError {
    /// The trainer broke the protocol, died, or took too long.
    Trainer(String),
    /// The trainer's logits cannot be scored (a non-finite log-probability of a counted target).
    Inconsistent(String),
    /// The data could not be read.
    Data(String),
    /// An evaluating process reported a failure after it had seen validation tokens (its
    /// message is not passed on).
    Failed(Failure),
    /// An evaluating process could not load the model (before any validation token: its message
    /// is passed on).
    Load(Failure),
    /// A witness row's log-probabilities changed with its company.
    Witness(WitnessReport),
}

/// One group as it went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupReport {
    pub rows: usize,
    /// From the process's start to Ready.
    pub ready_seconds: f64,
    /// From Ready to the last logits.
    pub seconds: f64,
}

/// The result of an evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub sums: BpbSums,
    pub groups: Vec<GroupReport>,
    pub seconds: f64,
    /// `(file, doc)` of every document the scored rows hold.
    pub placed: BTreeSet<(u32, u32)>,
    pub rows: usize,
    /// The largest peak resident set of the evaluating processes, MiB.
    pub peak_rss_mb: Option<f64>,
    /// Bytes the evaluating processes printed after their first validation token (not logged).
    pub withheld_bytes: u64,
    pub witnesses: WitnessReport,
}

/// Which rows are scored.
#[derive(Debug, Clone)]
pub enum Rows {
    /// The reference's: the pinned validation shard, from its start.
    Validation,
    /// The held-out split: the validation shard's documents that `exclude` (the documents of
    /// the validation rows) does not hold, in file order, packed the same way.
    HeldOut { exclude: BTreeSet<(u32, u32)> },
}

/// The evaluation of one trained model.
pub struct Evaluator<'a> {
    pub data: &'a PreparedData,
    /// Rows of a batch as the reference counts them (the profile's `eval_batch_size`): with
    /// `batches`, which rows are scored.
    pub batch_rows: usize,
    /// Batches scored (`eval_tokens / (batch_rows * seq_len)`).
    pub batches: usize,
    /// Rows evaluated together by one process (the batch, scaled down with the device batch
    /// after an out-of-memory exit); it does not change the score of a model that predicts each
    /// row from that row alone.
    pub group_rows: usize,
    pub seq_len: usize,
    pub rows: Rows,
    pub limits: EvalLimits,
    /// Rows evaluated a second time apart from their group (at most the rows scored).
    pub witness_rows: usize,
    pub tolerance: Tolerance,
}

impl Evaluator<'_> {
    /// Scores every group, each with a process `launch` starts, then checks the witness rows
    /// with one more.
    pub fn run(&self, launch: &Launcher<'_>) -> Result<Evaluation, EvalError> {
        let t0 = Instant::now();
        let (scored, placed) = self.scored_rows()?;
        let t = self.seq_len;
        let mut row_sums = vec![BpbSums::default(); scored.len()];
        // Every row's log-probability at every position, for the witness check.
        let mut log_probs = vec![0f32; scored.len() * t];
        let witnesses = WitnessReport { rows: 0, positions_compared: 0, max_abs_diff: 0.0, tolerance: self.tolerance, first_failure: None };
        let mut evaluation = Evaluation { sums: BpbSums::default(), groups: Vec::new(), seconds: 0.0, placed, rows: scored.len(), peak_rss_mb: None, withheld_bytes: 0, witnesses };
        let groups = scored.chunks(self.group_rows).zip(row_sums.chunks_mut(self.group_rows)).zip(log_probs.chunks_mut(self.group_rows * t));
        for ((group, sums), lps) in groups {
            let report = self.in_process(launch, group, sums, lps, &mut evaluation)?;
            evaluation.groups.push(report);
        }
        for s in &row_sums {
            evaluation.sums.merge(s);
        }
        // The witnesses, drawn now: the same rows again, with no other company than each other.
        let mut rng = Unpredictable::new();
        let picked = rng.sample(scored.len(), self.witness_rows.min(scored.len()));
        if !picked.is_empty() {
            let rows: Vec<Vec<u16>> = picked.iter().map(|&i| scored[i].clone()).collect();
            let mut again = vec![0f32; rows.len() * t];
            let mut sums = vec![BpbSums::default(); rows.len()];
            self.in_process(launch, &rows, &mut sums, &mut again, &mut evaluation)?;
            let mut report = WitnessReport { rows: rows.len(), positions_compared: rows.len() * t, max_abs_diff: 0.0, tolerance: self.tolerance, first_failure: None };
            for (w, &i) in picked.iter().enumerate() {
                for p in 0..t {
                    let (a, b) = (log_probs[i * t + p], again[w * t + p]);
                    let d = if a.is_finite() && b.is_finite() { (a - b).abs() as f64 } else if a == b { 0.0 } else { f64::INFINITY };
                    report.max_abs_diff = report.max_abs_diff.max(d);
                    if !self.tolerance.allows(a, b) && report.first_failure.is_none() {
                        report.first_failure = Some((i, p, a, b));
                    }
                }
            }
            if !report.passed() {
                return Err(EvalError::Witness(report));
            }
            evaluation.witnesses = report;
        }
        evaluation.seconds = t0.elapsed().as_secs_f64();
        Ok(evaluation)
    }

    /// `rows` through a fresh process, its figures added to `evaluation`.
    fn in_process(&self, launch: &Launcher<'_>, rows: &[Vec<u16>], sums: &mut [BpbSums], log_probs: &mut [f32], evaluation: &mut Evaluation) -> Result<GroupReport, EvalError> {
        let mut launched = launch(rows.len()).map_err(EvalError::Trainer)?;
        let report = self.score_group(&mut launched.process, rows, sums, log_probs);
        let exit = launched.process.finish(Duration::from_secs(2));
        evaluation.peak_rss_mb = larger(evaluation.peak_rss_mb, exit.max_rss_mb);
        evaluation.withheld_bytes += launched.process.withheld_bytes();
        report
    }

    /// One group through one process: Ready, then every position, then Quit. Each row's
    /// log-probabilities go to `log_probs` (`[rows, seq]`), its sums to `sums`.
    fn score_group(&self, process: &mut TrainerProcess, rows: &[Vec<u16>], sums: &mut [BpbSums], log_probs: &mut [f32]) -> Result<GroupReport, EvalError> {
        let token_bytes = self.data.token_bytes();
        let vocab = self.data.vocab_size();
        match process.recv(Some(process.started() + self.limits.ready)) {
            Ok(ToHarness::Ready) => {}
            Ok(ToHarness::Failed(f)) => return Err(EvalError::Load(f)),
            Ok(other) => return Err(EvalError::Trainer(format!("an evaluating process sent {} instead of Ready", kind(&other)))),
            Err(WireError::TimedOut) => {
                return Err(EvalError::Trainer(format!("an evaluating process did not load the model within {:.1} s (the time the training process took to warm up, plus 5 s)", self.limits.ready.as_secs_f64())));
            }
            Err(e) => return Err(lost(process, e)),
        }
        let ready = Instant::now();
        let ready_seconds = (ready - process.started()).as_secs_f64();
        // From the first token on, nothing it prints is logged.
        process.withhold_output();
        let deadline = ready + self.limits.group;
        let t = self.seq_len;
        for p in 0..t {
            let tokens: Vec<u16> = rows.iter().map(|row| row[p]).collect();
            process.send(&ToTrainer::Tokens(tokens)).map_err(|e| lost(process, e))?;
            match process.recv(Some(deadline)).map_err(|e| lost(process, e))? {
                ToHarness::Logits => {}
                ToHarness::Failed(f) => return Err(EvalError::Failed(f)),
                other => return Err(EvalError::Trainer(format!("sent {} instead of the logits of position {}", kind(&other), p + 1))),
            }
            let shm = process.shm().ok_or_else(|| EvalError::Trainer("no shared region for the logits".into()))?;
            // Every row's logits are copied out of the region and scored before the next
            // position (whose tokens are these targets) is sent.
            let step: Vec<Result<f32, String>> = rows
                .par_iter()
                .enumerate()
                .map_init(
                    || vec![0f32; vocab],
                    |buf, (r, row)| {
                        shm.read_f32s(r * vocab, buf).map_err(|e| format!("reading the shared logits: {e}"))?;
                        Ok(log_prob(buf, row[p + 1] as u32))
                    },
                )
                .collect();
            for (r, ((row, lp), s)) in rows.iter().zip(step).zip(sums.iter_mut()).enumerate() {
                let lp = lp.map_err(EvalError::Trainer)?;
                log_probs[r * t + p] = lp;
                s.add(row[p + 1] as u32, lp, token_bytes).map_err(|e| EvalError::Inconsistent(format!("{e:#}")))?;
            }
        }
        let _ = process.send(&ToTrainer::Quit);
        Ok(GroupReport { rows: rows.len(), ready_seconds, seconds: ready.elapsed().as_secs_f64() })
    }

    /// The scored rows (`seq_len + 1` tokens each, in the reference order) and the documents
    /// they hold.
    fn scored_rows(&self) -> Result<(Vec<Vec<u16>>, BTreeSet<(u32, u32)>), EvalError> {
        let (b, t) = (self.batch_rows, self.seq_len);
        let data_error = |e: anyhow::Error| EvalError::Data(format!("{e:#}"));
        let mut loader = match &self.rows {
            Rows::Validation => PackedLoader::validation(self.data, b, t).map_err(data_error)?,
            Rows::HeldOut { exclude } => {
                let split = held_out::split(self.data, exclude, b, t, self.batches).ok_or_else(|| EvalError::Data("no held-out documents are left".into()))?;
                held_out::loader(self.data, &split, b, t).map_err(data_error)?
            }
        };
        let mut scored: Vec<Vec<u16>> = Vec::with_capacity(self.batches * b);
        for _ in 0..self.batches {
            let batch = loader.next_batch().map_err(data_error)?;
            for r in 0..b {
                let mut row: Vec<u16> = batch.inputs[r * t..(r + 1) * t].iter().map(|&x| x as u16).collect();
                row.push(batch.targets[(r + 1) * t - 1] as u16);
                scored.push(row);
            }
        }
        Ok((scored, loader.placed().clone()))
    }
}

fn larger(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn kind(m: &ToHarness) -> &'static str {
    match m {
        ToHarness::Model(_) => "a model description",
        ToHarness::NextStep { .. } => "a request for training data",
        ToHarness::TrainingDone(_) => "TrainingDone",
        ToHarness::Ready => "Ready",
        ToHarness::Logits => "logits",
        ToHarness::Failed(_) => "a failure",
    }
}

/// A channel error during evaluation, with how the process ended when it is gone.
fn lost(process: &mut TrainerProcess, e: WireError) -> EvalError {
    match e {
        WireError::Closed => {
            let exit = process.finish(Duration::from_secs(5));
            EvalError::Trainer(format!("an evaluating process {} during evaluation", exit.describe()))
        }
        WireError::TimedOut => EvalError::Trainer("an evaluating process took longer to evaluate than the harness allows (over budget: the evaluation must not be a way to keep training)".into()),
        other => EvalError::Trainer(format!("{other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scored rows of `batch_rows` x `batches` rows of 32 positions of the tiny cache.
    fn rows_of(data: &PreparedData, batch_rows: usize, batches: usize, rows: Rows) -> (Vec<Vec<u16>>, BTreeSet<(u32, u32)>) {
        let limits = EvalLimits { ready: Duration::ZERO, group: Duration::ZERO };
        Evaluator { data, batch_rows, batches, group_rows: 3, seq_len: 32, rows, limits, witness_rows: 0, tolerance: Tolerance::for_dtype("f32") }.scored_rows().unwrap()
    }

    fn tiny() -> (tempfile::TempDir, PreparedData) {
        let dir = tempfile::tempdir().unwrap();
        prepare::fixtures::prepare_tiny_cache(dir.path()).unwrap();
        let data = PreparedData::open(dir.path()).unwrap();
        (dir, data)
    }

    /// The held-out split shares no document with the validation rows.
    #[test]
    fn held_out_rows_share_no_document_with_the_validation_rows() {
        let (_dir, data) = tiny();
        let (val_rows, val_docs) = rows_of(&data, 4, 4, Rows::Validation);
        let (ho_rows, ho_docs) = rows_of(&data, 4, 4, Rows::HeldOut { exclude: val_docs.clone() });
        assert!(!ho_docs.is_empty() && !val_docs.is_empty());
        assert_eq!((val_rows.len(), ho_rows.len()), (16, 16));
        assert!(val_docs.is_disjoint(&ho_docs), "{:?}", val_docs.intersection(&ho_docs).collect::<Vec<_>>());
        let val: BTreeSet<&Vec<u16>> = val_rows.iter().collect();
        assert!(ho_rows.iter().all(|r| !val.contains(r)));
    }

    /// The scored rows are the loader's, in its order: a batch of 8 rows is two batches of 4.
    #[test]
    fn the_rows_do_not_depend_on_the_batch_size() {
        let (_dir, data) = tiny();
        assert_eq!(rows_of(&data, 8, 2, Rows::Validation), rows_of(&data, 4, 4, Rows::Validation));
        assert_eq!(rows_of(&data, 16, 1, Rows::Validation).0.len(), 16);
    }
}
