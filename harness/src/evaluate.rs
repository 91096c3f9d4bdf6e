//! Evaluation across the process boundary: the harness sends inputs, the trainer answers with
//! logits, the harness computes val_bpb itself and checks that the answers are honest.
//!
//! **The rows.** The scored rows are the reference's: `eval_tokens / seq_len` rows of the
//! pinned validation shard, packed as the reference packs them. Their loss is summed in that
//! order whatever order they were sent in, so val_bpb does not depend on the shuffle.
//!
//! **Probe rows**, one batch's worth, are mixed in. Each copies a scored row up to a cut point
//! of its own, drawn at random, and continues with real tokens from elsewhere in the stream
//! (the start of another row, from its BOS), so it looks like any packed row. A causal model
//! gives the probe and its original the same logits before the cut; one that reads later
//! tokens does not, at the position before the cut at least. Half of the probes are the
//! **canary**: their originals make up the first batch sent and they make up the last, so a
//! model that changes while it is being scored (training on evaluation inputs) gives different
//! logits for the same prefixes at the start and at the end. Rows, cuts and the order are drawn
//! from the kernel's generator after training, and every batch has the same shape.
//!
//! **Transport** ([`EvalMode`]). `Full`: the trainer writes every logit into the shared
//! region; the harness copies each row out before reading it. `Summary` (batches too big to
//! copy): the trainer sends per position the log-sum-exp and the logit of the next input token
//! (a target it can see in its inputs anyway), plus every logit of each row's last position
//! (whose target it never sees); the harness then asks, at positions it draws after the
//! answer, for the full logits, and checks that they give the same values.
//!
//! What this does not catch is written down in the README's threat model.

use std::collections::BTreeSet;
use std::time::Instant;

use prepare::data::PreparedData;
use prepare::held_out;
use rayon::prelude::*;
use prepare::eval::{BpbSums, log_prob};
use prepare::fastmath::log_sum_exp;
use prepare::loader::PackedLoader;
use sealed::random::Unpredictable;
use sealed::wire::{Answer, EvalBatch, EvalMode, Position, ToHarness, ToTrainer, WireError};

use crate::trainer_process::TrainerProcess;

/// Positions compared per probe: the one before the cut and up to this many earlier ones.
const EARLIER_POSITIONS: usize = 7;
/// Positions revealed per batch in summary mode to check the answer, besides the probes'.
const SPOT_CHECKS: usize = 32;

/// How far two logits computed for the same prefix may differ: `abs + rel * |x|`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tolerance {
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    /// By the profile's dtype: tight in f32 (the same computation gives the same bits on the
    /// CPU backends), looser in half precision.
    pub fn for_dtype(dtype: &str) -> Tolerance {
        match dtype {
            "f32" => Tolerance { abs: 1e-4, rel: 1e-4 },
            _ => Tolerance { abs: 2e-2, rel: 1e-2 },
        }
    }

    fn allows(&self, a: f32, b: f32) -> bool {
        if a.is_finite() && b.is_finite() {
            (a - b).abs() <= self.abs + self.rel * a.abs().max(b.abs())
        } else {
            a == b || (a.is_nan() && b.is_nan())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// A scored row, by its index in the reference order.
    Scored(usize),
    /// Probe number `k`.
    Probe(usize),
    /// A scored row sent a second time to fill the last batch (not counted, not compared).
    Filler,
}

#[derive(Debug, Clone)]
struct Probe {
    /// Index of the scored row it copies.
    original: usize,
    /// First position whose token differs from the original's.
    cut: usize,
    /// Positions compared (all before the cut, the last one is `cut - 1`).
    positions: Vec<usize>,
    canary: bool,
    /// Full logits at `positions`, of the original and of the probe, once received.
    original_logits: Option<Vec<f32>>,
    probe_logits: Option<Vec<f32>>,
}

/// What the probes found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeReport {
    pub probes: usize,
    pub canary_probes: usize,
    pub positions_compared: usize,
    /// Largest |difference| over the compared logits.
    pub max_abs_diff: f64,
    pub tolerance: Tolerance,
    /// Probes whose logits differed from their original's beyond the tolerance.
    pub failed: usize,
    pub failed_canary: usize,
    /// The first failure: (cut, position, |difference|).
    pub first_failure: Option<(usize, usize, f64)>,
}

impl ProbeReport {
    pub fn passed(&self) -> bool {
        self.failed == 0
    }

    /// The message of a refused run.
    pub fn refusal(&self) -> String {
        let (cut, pos, diff) = self.first_failure.unwrap_or((0, 0, 0.0));
        let what = if self.failed_canary > 0 && self.failed_canary == self.failed {
            "the model changed while it was being evaluated (the canary rows, scored first and last, got different logits for the same tokens)"
        } else {
            "the model's logits before a position depend on tokens after it, or the model changed while it was being evaluated"
        };
        format!(
            "CAUSALITY VIOLATION: {what}: {} of {} probe rows differ from their originals before their cut (first: cut {cut}, position {pos}, |diff| {diff:.3e}; tolerance {:e} + {:e}*|x|). The run is refused: its val_bpb would be meaningless.",
            self.failed, self.probes, self.tolerance.abs, self.tolerance.rel,
        )
    }
}

/// Why evaluation stopped.
#[derive(Debug)]
pub enum EvalError {
    /// The trainer broke the protocol, died, or took too long.
    Trainer(String),
    /// An answer did not match the trainer's own logits (summary mode).
    Inconsistent(String),
    /// The data could not be read.
    Data(String),
    /// A finished evaluation whose probes failed.
    Probes(ProbeReport),
    /// The trainer reported a failure.
    Failed(sealed::wire::Failure),
}

/// The result of an evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub sums: BpbSums,
    pub probes: ProbeReport,
    pub batches: usize,
    pub seconds: f64,
    pub mode: EvalMode,
    pub spot_checks: usize,
    /// `(file, doc)` of every document the scored rows hold.
    pub placed: BTreeSet<(u32, u32)>,
    pub rows: usize,
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
    pub batch_rows: usize,
    pub seq_len: usize,
    /// Scored batches (`eval_tokens / (batch_rows * seq_len)`).
    pub steps: usize,
    pub rows: Rows,
    pub mode: EvalMode,
    pub tolerance: Tolerance,
    /// The first batch must be answered by then: a trainer must not train on before it
    /// answers (see `run::eval_deadlines`). Later changes to the model are the canary's to see.
    pub first_deadline: Instant,
    /// Evaluation must be over by then.
    pub deadline: Instant,
}

struct Plan {
    rows: Vec<(Vec<u16>, Role)>,
    probes: Vec<Probe>,
    scored: usize,
}

impl Evaluator<'_> {
    /// Runs the whole evaluation against `trainer`.
    pub fn run(&self, trainer: &mut TrainerProcess) -> Result<Evaluation, EvalError> {
        let t0 = Instant::now();
        let mut rng = Unpredictable::new();
        let (mut plan, placed) = self.plan(&mut rng)?;
        let token_bytes = self.data.token_bytes();
        let vocab = self.data.vocab_size();
        let mut row_sums = vec![BpbSums::default(); plan.scored];
        let mut spot_checks = 0;
        let (b, t) = (self.batch_rows, self.seq_len);
        let batches = plan.rows.len() / b;
        for batch in 0..batches {
            let rows = &plan.rows[batch * b..(batch + 1) * b];
            let inputs: Vec<u16> = rows.iter().flat_map(|(tokens, _)| tokens[..t].iter().copied()).collect();
            trainer.send(&ToTrainer::Eval(EvalBatch { rows: b, seq_len: t, inputs })).map_err(|e| lost(trainer, e))?;
            let deadline = if batch == 0 { self.first_deadline.min(self.deadline) } else { self.deadline };
            let answer = match trainer.recv(Some(deadline)).map_err(|e| lost(trainer, e))? {
                ToHarness::Answer(a) => a,
                ToHarness::Failed(f) => return Err(EvalError::Failed(f)),
                other => return Err(EvalError::Trainer(format!("sent {} instead of an answer to evaluation batch {batch}", kind(&other)))),
            };
            // Which logits the probes need from this batch: (row in batch, probe, original?).
            let mut wanted: Vec<(usize, usize, bool)> = Vec::new();
            for (r, (_, role)) in rows.iter().enumerate() {
                match *role {
                    Role::Probe(k) => wanted.push((r, k, false)),
                    Role::Scored(i) => wanted.extend(plan.probes.iter().enumerate().filter(|(_, p)| p.original == i).map(|(k, _)| (r, k, true))),
                    Role::Filler => {}
                }
            }
            let rows: Vec<(Vec<u16>, Role)> = rows.to_vec();
            match (answer, self.mode) {
                (Answer::Full, EvalMode::Full) => {
                    let shm = trainer.shm().ok_or_else(|| EvalError::Trainer("no shared region for a full answer".into()))?;
                    let read = |r: usize, p: usize, out: &mut [f32]| -> Result<(), EvalError> {
                        shm.read_f32s((r * t + p) * vocab, out).map_err(|e| EvalError::Trainer(format!("reading the shared logits: {e}")))
                    };
                    // Each row on its own core; every position is copied out of the region
                    // before it is read.
                    let sums: Vec<Result<Option<(usize, BpbSums)>, EvalError>> = rows
                        .par_iter()
                        .enumerate()
                        .map(|(r, (tokens, role))| {
                            let Role::Scored(i) = *role else { return Ok(None) };
                            let mut buf = vec![0f32; vocab];
                            let mut s = BpbSums::default();
                            for p in 0..t {
                                read(r, p, &mut buf)?;
                                let target = tokens[p + 1] as u32;
                                s.add(target, log_prob(&buf, target), token_bytes).map_err(|e| EvalError::Inconsistent(format!("{e:#}")))?;
                            }
                            Ok(Some((i, s)))
                        })
                        .collect();
                    for s in sums {
                        if let Some((i, s)) = s? {
                            row_sums[i] = s;
                        }
                    }
                    for &(r, k, original) in &wanted {
                        let positions = plan.probes[k].positions.clone();
                        let mut v = vec![0f32; positions.len() * vocab];
                        for (j, &p) in positions.iter().enumerate() {
                            read(r, p, &mut v[j * vocab..(j + 1) * vocab])?;
                        }
                        store(&mut plan.probes[k], original, v);
                    }
                }
                (Answer::Summary { lse, next, last }, EvalMode::Summary) => {
                    if lse.len() != b * t || next.len() != b * (t - 1) || last.len() != b * vocab {
                        return Err(EvalError::Trainer(format!(
                            "a summary answer of {} / {} / {} values for a {b}x{t} batch (expected {} / {} / {})",
                            lse.len(), next.len(), last.len(), b * t, b * (t - 1), b * vocab
                        )));
                    }
                    for (r, (tokens, role)) in rows.iter().enumerate() {
                        let last_row = &last[r * vocab..(r + 1) * vocab];
                        let claimed = lse[r * t + t - 1];
                        if !self.tolerance.allows(log_sum_exp(last_row), claimed) {
                            return Err(EvalError::Inconsistent(format!("row {r} of batch {batch}: the last position's logits give a log-sum-exp of {}, the answer says {claimed}", log_sum_exp(last_row))));
                        }
                        if let Role::Scored(i) = role {
                            for p in 0..t - 1 {
                                row_sums[*i].add(tokens[p + 1] as u32, next[r * (t - 1) + p] - lse[r * t + p], token_bytes).map_err(|e| EvalError::Inconsistent(format!("{e:#}")))?;
                            }
                            row_sums[*i].add(tokens[t] as u32, log_prob(last_row, tokens[t] as u32), token_bytes).map_err(|e| EvalError::Inconsistent(format!("{e:#}")))?;
                        }
                    }
                    // Positions drawn now, after the answer: spot checks, then the probes'.
                    let mut reveal: Vec<Position> = (0..SPOT_CHECKS).map(|_| Position { row: rng.below(b as u64) as u32, pos: rng.below(t as u64 - 1) as u32 }).collect();
                    let checks = reveal.len();
                    for &(r, k, _) in &wanted {
                        reveal.extend(plan.probes[k].positions.iter().map(|&p| Position { row: r as u32, pos: p as u32 }));
                    }
                    let order = shuffled_order(&mut rng, reveal.len());
                    let sent: Vec<Position> = order.iter().map(|&i| reveal[i]).collect();
                    trainer.send(&ToTrainer::Reveal(sent)).map_err(|e| lost(trainer, e))?;
                    let vectors = match trainer.recv(Some(self.deadline)).map_err(|e| lost(trainer, e))? {
                        ToHarness::Vectors(v) if v.len() == reveal.len() * vocab => v,
                        ToHarness::Vectors(v) => return Err(EvalError::Trainer(format!("{} values for {} revealed positions of {vocab} logits", v.len(), reveal.len()))),
                        ToHarness::Failed(f) => return Err(EvalError::Failed(f)),
                        other => return Err(EvalError::Trainer(format!("sent {} instead of the revealed logits", kind(&other)))),
                    };
                    let mut by_index = vec![0usize; reveal.len()];
                    for (sent_at, &i) in order.iter().enumerate() {
                        by_index[i] = sent_at;
                    }
                    let vector = |i: usize| &vectors[by_index[i] * vocab..(by_index[i] + 1) * vocab];
                    for (i, pos) in reveal.iter().enumerate().take(checks) {
                        let (r, p) = (pos.row as usize, pos.pos as usize);
                        let v = vector(i);
                        let next_token = rows[r].0[p + 1] as usize;
                        let (want_lse, want_next) = (lse[r * t + p], next[r * (t - 1) + p]);
                        if !self.tolerance.allows(log_sum_exp(v), want_lse) || !self.tolerance.allows(v[next_token], want_next) {
                            return Err(EvalError::Inconsistent(format!(
                                "row {r} position {p} of batch {batch}: the answer said log-sum-exp {want_lse} and next-token logit {want_next}, the full logits give {} and {}",
                                log_sum_exp(v), v[next_token]
                            )));
                        }
                    }
                    spot_checks += checks;
                    let mut at = checks;
                    for &(_, k, original) in &wanted {
                        let n = plan.probes[k].positions.len();
                        let v: Vec<f32> = (at..at + n).flat_map(|i| vector(i).iter().copied()).collect();
                        at += n;
                        store(&mut plan.probes[k], original, v);
                    }
                }
                (answer, mode) => {
                    return Err(EvalError::Trainer(format!("answered a {mode:?} evaluation with a {} answer", if matches!(answer, Answer::Full) { "full" } else { "summary" })));
                }
            }
        }
        let probes = self.compare(&plan.probes, vocab);
        if !probes.passed() {
            return Err(EvalError::Probes(probes));
        }
        let mut sums = BpbSums::default();
        for s in &row_sums {
            sums.merge(s);
        }
        Ok(Evaluation { sums, probes, batches, seconds: t0.elapsed().as_secs_f64(), mode: self.mode, spot_checks, placed, rows: plan.scored })
    }

    /// The rows to send, in order, and the probes; the documents the scored rows hold.
    fn plan(&self, rng: &mut Unpredictable) -> Result<(Plan, BTreeSet<(u32, u32)>), EvalError> {
        let (b, t) = (self.batch_rows, self.seq_len);
        let data_error = |e: anyhow::Error| EvalError::Data(format!("{e:#}"));
        let mut loader = match &self.rows {
            Rows::Validation => PackedLoader::validation(self.data, b, t).map_err(data_error)?,
            Rows::HeldOut { exclude } => {
                let split = held_out::split(self.data, exclude, b, t, self.steps).ok_or_else(|| EvalError::Data("no held-out documents are left".into()))?;
                held_out::loader(self.data, &split, b, t).map_err(data_error)?
            }
        };
        let mut scored: Vec<Vec<u16>> = Vec::with_capacity(self.steps * b);
        for _ in 0..self.steps {
            let batch = loader.next_batch().map_err(|e| EvalError::Data(format!("{e:#}")))?;
            for r in 0..b {
                let mut row: Vec<u16> = batch.inputs[r * t..(r + 1) * t].iter().map(|&x| x as u16).collect();
                row.push(batch.targets[(r + 1) * t - 1] as u16);
                scored.push(row);
            }
        }
        let n = scored.len();
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let first_batch: Vec<usize> = order[..b].to_vec();
        let canary = b.div_ceil(2);
        let mut probes = Vec::with_capacity(b);
        let mut probe_rows = Vec::with_capacity(b);
        for k in 0..b {
            let original = if k < canary { first_batch[k] } else { rng.below(n as u64) as usize };
            let Some((row, cut)) = splice(&scored, original, rng) else { continue };
            let mut positions: Vec<usize> = if cut > 1 { rng.sample(cut - 1, EARLIER_POSITIONS.min(cut - 1)) } else { Vec::new() };
            positions.push(cut - 1);
            positions.sort_unstable();
            probes.push(Probe { original, cut, positions, canary: k < canary, original_logits: None, probe_logits: None });
            probe_rows.push(row);
        }
        // First batch: the canaries' originals (and other scored rows). Last batch: the
        // canary probes, filled up with other rows. Between: everything else, shuffled.
        let mut rest: Vec<(Vec<u16>, Role)> = order[b..].iter().map(|&i| (scored[i].clone(), Role::Scored(i))).collect();
        let mut last: Vec<(Vec<u16>, Role)> = Vec::new();
        for (k, row) in probe_rows.into_iter().enumerate() {
            if probes[k].canary { last.push((row, Role::Probe(k))) } else { rest.push((row, Role::Probe(k))) }
        }
        // Rows missing to fill whole batches (a probe that found no cut) are scored rows sent
        // twice, not counted the second time.
        while (b + rest.len() + last.len()) % b != 0 {
            let i = rng.below(n as u64) as usize;
            rest.push((scored[i].clone(), Role::Filler));
        }
        rng.shuffle(&mut rest);
        let fill = b - last.len() % b;
        if fill < b {
            let at = rest.len().saturating_sub(fill);
            last.extend(rest.split_off(at));
        }
        rng.shuffle(&mut last);
        let mut rows: Vec<(Vec<u16>, Role)> = first_batch.iter().map(|&i| (scored[i].clone(), Role::Scored(i))).collect();
        rows.extend(rest);
        rows.extend(last);
        debug_assert_eq!(rows.len() % b, 0);
        Ok((Plan { rows, probes, scored: n }, loader.placed().clone()))
    }

    fn compare(&self, probes: &[Probe], vocab: usize) -> ProbeReport {
        let mut report = ProbeReport {
            probes: probes.len(),
            canary_probes: probes.iter().filter(|p| p.canary).count(),
            positions_compared: 0,
            max_abs_diff: 0.0,
            tolerance: self.tolerance,
            failed: 0,
            failed_canary: 0,
            first_failure: None,
        };
        for p in probes {
            let (Some(a), Some(b)) = (&p.original_logits, &p.probe_logits) else {
                // Both rows were sent; a missing side is a bug here, not the trainer's doing.
                continue;
            };
            report.positions_compared += p.positions.len();
            let mut failed_at = None;
            for (j, &pos) in p.positions.iter().enumerate() {
                for (x, y) in a[j * vocab..(j + 1) * vocab].iter().zip(&b[j * vocab..(j + 1) * vocab]) {
                    let d = if x.is_finite() && y.is_finite() { (x - y).abs() as f64 } else if self.tolerance.allows(*x, *y) { 0.0 } else { f64::INFINITY };
                    report.max_abs_diff = report.max_abs_diff.max(d);
                    if !self.tolerance.allows(*x, *y) && failed_at.is_none() {
                        failed_at = Some((pos, d));
                    }
                }
            }
            if let Some((pos, d)) = failed_at {
                report.failed += 1;
                report.failed_canary += p.canary as usize;
                report.first_failure.get_or_insert((p.cut, pos, d));
            }
        }
        report
    }
}

fn store(probe: &mut Probe, original: bool, logits: Vec<f32>) {
    if original {
        probe.original_logits = Some(logits);
    } else {
        probe.probe_logits = Some(logits);
    }
}

/// A probe row for scored row `original`: its tokens up to a random cut `c`, then the start of
/// another scored row (from its BOS). The cut is where the probe first differs.
fn splice(scored: &[Vec<u16>], original: usize, rng: &mut Unpredictable) -> Option<(Vec<u16>, usize)> {
    let row = &scored[original];
    let width = row.len();
    let t = width - 1;
    if t < 2 || scored.len() < 2 {
        return None;
    }
    for _ in 0..64 {
        let cut = rng.between(1, t - 1);
        let mut other = rng.below(scored.len() as u64 - 1) as usize;
        if other >= original {
            other += 1;
        }
        let suffix = &scored[other][..width - cut];
        // The first input after the cut must differ, or the probe would test a later position.
        if suffix[0] != row[cut] {
            let mut probe = row[..cut].to_vec();
            probe.extend_from_slice(suffix);
            return Some((probe, cut));
        }
    }
    None
}

fn shuffled_order(rng: &mut Unpredictable, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut v);
    v
}

fn kind(m: &ToHarness) -> &'static str {
    match m {
        ToHarness::Model(_) => "a model description",
        ToHarness::NextStep { .. } => "a request for training data",
        ToHarness::TrainingDone(_) => "TrainingDone",
        ToHarness::Answer(_) => "an answer",
        ToHarness::Vectors(_) => "logit vectors",
        ToHarness::Failed(_) => "a failure",
    }
}

/// A channel error during evaluation, with how the trainer ended when it is gone.
fn lost(trainer: &mut TrainerProcess, e: WireError) -> EvalError {
    match e {
        WireError::Closed => {
            let exit = trainer.finish(std::time::Duration::from_secs(5));
            EvalError::Trainer(format!("the trainer {} during evaluation", exit.describe()))
        }
        WireError::TimedOut => EvalError::Trainer("the trainer took longer to evaluate than the harness allows (over budget: a trainer must not keep training while it is evaluated)".into()),
        other => EvalError::Trainer(format!("{other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_copies_its_original_up_to_the_cut_and_then_differs() {
        let scored: Vec<Vec<u16>> = (0..4u16).map(|r| std::iter::once(9).chain((0..16).map(|i| r * 100 + i)).collect()).collect();
        let mut rng = Unpredictable::new();
        for _ in 0..200 {
            let (probe, cut) = splice(&scored, 2, &mut rng).unwrap();
            assert_eq!(probe.len(), 17);
            assert!((1..16).contains(&cut));
            assert_eq!(&probe[..cut], &scored[2][..cut]);
            assert_ne!(probe[cut], scored[2][cut]);
            assert_eq!(probe[cut], 9, "the suffix starts at another row's BOS");
        }
    }

    /// The held-out split shares no document with the validation rows, probe rows included.
    #[test]
    fn held_out_rows_share_no_document_with_the_validation_rows() {
        let dir = tempfile::tempdir().unwrap();
        prepare::fixtures::prepare_tiny_cache(dir.path()).unwrap();
        let data = PreparedData::open(dir.path()).unwrap();
        let now = Instant::now();
        let ev = |rows| Evaluator { data: &data, batch_rows: 4, seq_len: 32, steps: 4, rows, mode: EvalMode::Full, tolerance: Tolerance::for_dtype("f32"), first_deadline: now, deadline: now };
        let mut rng = Unpredictable::new();
        let (val_plan, val_docs) = ev(Rows::Validation).plan(&mut rng).unwrap();
        let (ho_plan, ho_docs) = ev(Rows::HeldOut { exclude: val_docs.clone() }).plan(&mut rng).unwrap();
        assert!(!ho_docs.is_empty() && !val_docs.is_empty());
        assert!(val_docs.is_disjoint(&ho_docs), "{:?}", val_docs.intersection(&ho_docs).collect::<Vec<_>>());
        // Probe rows splice held-out rows only: every row sent holds no validation row.
        let val_rows: BTreeSet<&Vec<u16>> = val_plan.rows.iter().map(|(r, _)| r).collect();
        assert!(ho_plan.rows.iter().all(|(r, _)| !val_rows.contains(r)));
        assert!(ho_plan.rows.iter().any(|(_, r)| matches!(r, Role::Probe(_))), "held-out batches carry probes too");
    }

    #[test]
    fn tolerance_is_tight_in_f32() {
        let t = Tolerance::for_dtype("f32");
        assert!(t.allows(10.0, 10.0005));
        assert!(!t.allows(10.0, 10.01));
        assert!(t.allows(f32::NAN, f32::NAN));
        assert!(!t.allows(f32::INFINITY, 1.0));
        assert!(Tolerance::for_dtype("bf16").allows(10.0, 10.05));
    }
}
