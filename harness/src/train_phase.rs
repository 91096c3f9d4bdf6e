//! The training phase: the harness hands the trainer each step's rows from the reference
//! packing loader while the clock allows it, and listens for how training ends.

use std::time::Instant;

use prepare::clock::{Clock, Decision, OverBudget};
use prepare::loader::PackedLoader;
use contract::wire::{Done, Failure, MAX_FRAME, ModelInfo, StepReport, ToHarness, ToTrainer, TrainBatch, WireError};

use crate::trainer_process::TrainerProcess;

/// One step as the harness saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepRecord {
    pub step: u64,
    /// Tokens handed out up to and including this step.
    pub tokens: u64,
    /// The trainer's loss for the step (reported with its next request; none for a last step
    /// the trainer did not report).
    pub loss: Option<f64>,
    pub lr_multiplier: Option<f64>,
    /// Seconds from the trainer's start to the request for this step.
    pub elapsed: f64,
    /// Tokens per second of the step, from the requests' timing (none for the last step).
    pub tokens_per_second: Option<f64>,
}

/// How training ended, when it ended well.
#[derive(Debug, Clone)]
pub struct Trained {
    pub model: ModelInfo,
    pub done: Done,
    pub steps: Vec<StepRecord>,
}

/// Why training ended badly.
#[derive(Debug)]
pub enum TrainFailure {
    /// The reported loss went NaN or above 100.
    Diverged { step: u64, loss: f64 },
    /// The trainer said why it stopped.
    Reported(Failure),
    /// Training ended (or was still going) past the budget and the allowance.
    OverBudget(OverBudget),
    /// The trainer died, hung, or broke the protocol.
    Trainer(String),
}

/// The training phase.
pub struct TrainPhase<'a> {
    pub clock: &'a mut Clock,
    pub loader: &'a mut PackedLoader,
    pub seq_len: usize,
}

impl TrainPhase<'_> {
    /// Serves the trainer until it says training is done.
    pub fn run(&mut self, trainer: &mut TrainerProcess) -> Result<Trained, TrainFailure> {
        let width = self.seq_len + 1;
        // The largest step whose rows fit one frame.
        let max_rows = (MAX_FRAME - 64) / (2 * width);
        let mut model: Option<ModelInfo> = None;
        let mut steps: Vec<StepRecord> = Vec::new();
        // Rows cut ahead of the request, while the trainer computes: the row stream is the same
        // whatever the timing.
        let mut ahead: Vec<u16> = Vec::new();
        loop {
            let msg = match trainer.recv(self.clock.deadline()) {
                Ok(m) => m,
                Err(WireError::TimedOut) => return Err(TrainFailure::OverBudget(self.clock.overdue(Instant::now()))),
                Err(WireError::Closed) => {
                    let exit = trainer.finish(std::time::Duration::from_secs(5));
                    return Err(TrainFailure::Trainer(format!("the trainer {} during training", exit.describe())));
                }
                Err(e) => return Err(TrainFailure::Trainer(e.to_string())),
            };
            let now = Instant::now();
            match msg {
                ToHarness::Model(info) => {
                    if model.is_some() {
                        return Err(TrainFailure::Trainer("the trainer described its model twice".into()));
                    }
                    if !(info.flops_per_token.is_finite() && info.flops_per_token >= 0.0) {
                        return Err(TrainFailure::Trainer(format!("the trainer reported {} FLOPs per token", info.flops_per_token)));
                    }
                    self.clock.set_flops_per_token(info.flops_per_token);
                    model = Some(info);
                }
                ToHarness::NextStep { rows, report } => {
                    if model.is_none() {
                        return Err(TrainFailure::Trainer("the trainer asked for data before describing its model".into()));
                    }
                    let rows = rows as usize;
                    if rows == 0 || rows > max_rows {
                        return Err(TrainFailure::Trainer(format!("the trainer asked for {rows} rows in one step (1 to {max_rows})")));
                    }
                    let elapsed = (now - trainer.started()).as_secs_f64();
                    close_last_step(&mut steps, elapsed, report)?;
                    match self.clock.request(now) {
                        Decision::Spent => send(trainer, &ToTrainer::Stop)?,
                        Decision::Serve { step, progress } => {
                            let tokens = self.cut_rows(&mut ahead, rows);
                            let batch = TrainBatch { step, epoch: self.loader.epoch(), progress, elapsed, rows, seq_len: self.seq_len, tokens };
                            send(trainer, &ToTrainer::Batch(batch))?;
                            self.clock.served((rows * self.seq_len) as u64);
                            steps.push(StepRecord { step, tokens: self.clock.tokens(), loss: None, lr_multiplier: None, elapsed, tokens_per_second: None });
                            // Cut the next step's rows now, while the trainer works on this one.
                            if ahead.is_empty() {
                                ahead = self.loader.next_rows(rows);
                            }
                        }
                    }
                }
                ToHarness::TrainingDone(done) => {
                    self.clock.finish(now).map_err(TrainFailure::OverBudget)?;
                    let model = model.ok_or_else(|| TrainFailure::Trainer("the trainer finished without describing its model".into()))?;
                    return Ok(Trained { model, done, steps });
                }
                ToHarness::Failed(f) => return Err(TrainFailure::Reported(f)),
                ToHarness::Ready | ToHarness::Logits => {
                    return Err(TrainFailure::Trainer("the trainer sent an evaluation message during training".into()));
                }
            }
        }
    }
}

impl TrainPhase<'_> {
    /// The next `rows` rows of the stream, from those cut ahead first.
    fn cut_rows(&mut self, ahead: &mut Vec<u16>, rows: usize) -> Vec<u16> {
        let width = self.seq_len + 1;
        while ahead.len() < rows * width {
            ahead.extend(self.loader.next_rows(rows));
        }
        let rest = ahead.split_off(rows * width);
        std::mem::replace(ahead, rest)
    }
}

/// The last step's throughput, now that the next request timed it, and the loss the trainer
/// reported for it; a loss that went NaN or above 100 ends the run.
fn close_last_step(steps: &mut [StepRecord], elapsed: f64, report: Option<StepReport>) -> Result<(), TrainFailure> {
    let before = steps_before(steps);
    let Some(last) = steps.last_mut() else { return Ok(()) };
    let dt = elapsed - last.elapsed;
    if dt > 0.0 {
        last.tokens_per_second = Some((last.tokens - before) as f64 / dt);
    }
    if let Some(r) = report {
        last.loss = Some(r.loss);
        last.lr_multiplier = Some(r.lr_multiplier);
        if r.loss.is_nan() || r.loss > 100.0 {
            return Err(TrainFailure::Diverged { step: last.step, loss: r.loss });
        }
    }
    Ok(())
}

/// Tokens handed out before the last step.
fn steps_before(steps: &[StepRecord]) -> u64 {
    if steps.len() >= 2 { steps[steps.len() - 2].tokens } else { 0 }
}

fn send(trainer: &mut TrainerProcess, m: &ToTrainer) -> Result<(), TrainFailure> {
    trainer.send(m).map_err(|e| match e {
        WireError::Closed => {
            let exit = trainer.finish(std::time::Duration::from_secs(5));
            TrainFailure::Trainer(format!("the trainer {} during training", exit.describe()))
        }
        other => TrainFailure::Trainer(other.to_string()),
    })
}

/// The per-step CSV: step, tokens, loss, lr multiplier, tokens/s, elapsed seconds.
pub fn steps_csv(steps: &[StepRecord]) -> String {
    let mut out = String::from("step,tokens,loss,lr_multiplier,tokens_per_second,elapsed_seconds\n");
    let opt = |x: Option<f64>, digits: usize| x.map(|v| format!("{v:.digits$}")).unwrap_or_default();
    for s in steps {
        out.push_str(&format!(
            "{},{},{},{},{},{:.3}\n",
            s.step,
            s.tokens,
            opt(s.loss, 6),
            opt(s.lr_multiplier, 4),
            opt(s.tokens_per_second, 1),
            s.elapsed
        ));
    }
    out
}
