//! The training budget and the clock that enforces it.
//!
//! The harness owns the clock and lends it to the trainer, which reports each finished step.
//! The figures in the summary (training seconds, steps, tokens) are read from the clock, not
//! from anything the trainer returns.

use std::time::{Duration, Instant};

/// How much training an experiment gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Counted wall-clock seconds (warm-up steps excluded), as the reference.
    Time(f64),
    /// Training tokens, warm-up included: comparable across hardware.
    Tokens(u64),
    /// Training FLOPs (tokens x FLOPs per token), warm-up included: comparable across models too.
    Flops(f64),
}

impl Budget {
    /// Parses `300`, `300s`, `time:300`, `tokens:5e6`, `flops:1e15`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (kind, value) = match text.split_once(':') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => ("time", text.trim_end_matches('s')),
        };
        let number: f64 = value
            .parse()
            .map_err(|_| format!("budget {text:?}: {value:?} is not a number"))?;
        if !(number.is_finite() && number > 0.0) {
            return Err(format!("budget {text:?} must be a positive number"));
        }
        match kind {
            "time" => Ok(Budget::Time(number)),
            "tokens" => Ok(Budget::Tokens(number as u64)),
            "flops" => Ok(Budget::Flops(number)),
            other => Err(format!(
                "budget kind {other:?} is unknown: use time:SECONDS, tokens:N or flops:N"
            )),
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Time(s) => write!(f, "time:{s}"),
            Budget::Tokens(n) => write!(f, "tokens:{n}"),
            Budget::Flops(x) => write!(f, "flops:{x:e}"),
        }
    }
}

/// What one finished step cost.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    /// Zero-based index of the step just finished.
    pub step: u64,
    /// Wall-clock duration of the step.
    pub duration: Duration,
    /// Whether the step counted toward the time budget (false during warm-up).
    pub counted: bool,
}

/// Counts steps, tokens and counted time against a [`Budget`].
#[derive(Debug)]
pub struct TrainingClock {
    budget: Budget,
    warmup_steps: u64,
    flops_per_token: f64,
    steps: u64,
    tokens: u64,
    counted: Duration,
    step_started: Option<Instant>,
}

impl TrainingClock {
    /// A clock for `budget` whose first `warmup_steps` steps are not counted in training time.
    pub fn new(budget: Budget, warmup_steps: u64) -> Self {
        Self {
            budget,
            warmup_steps,
            flops_per_token: 0.0,
            steps: 0,
            tokens: 0,
            counted: Duration::ZERO,
            step_started: None,
        }
    }

    /// The budget this clock enforces.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Needed for a FLOPs budget; the trainer sets it once it knows the model.
    pub fn set_flops_per_token(&mut self, flops_per_token: f64) {
        self.flops_per_token = flops_per_token;
    }

    /// Marks the start of a step.
    pub fn start_step(&mut self) {
        self.step_started = Some(Instant::now());
    }

    /// Marks the end of a step that trained on `tokens` tokens. Call it after the device has
    /// finished the step's work (read the loss back first), or the time is not real.
    pub fn finish_step(&mut self, tokens: u64) -> StepTiming {
        let duration = self
            .step_started
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let step = self.steps;
        let counted = step >= self.warmup_steps;
        if counted {
            self.counted += duration;
        }
        self.steps += 1;
        self.tokens += tokens;
        StepTiming {
            step,
            duration,
            counted,
        }
    }

    /// Fraction of the budget spent, in `[0, 1]`; drives the learning-rate schedule.
    pub fn progress(&self) -> f64 {
        let p = match self.budget {
            Budget::Time(secs) => self.counted.as_secs_f64() / secs,
            Budget::Tokens(n) => self.tokens as f64 / n as f64,
            Budget::Flops(f) => self.tokens as f64 * self.flops_per_token / f,
        };
        p.clamp(0.0, 1.0)
    }

    /// True once warm-up is over and the budget is spent.
    pub fn done(&self) -> bool {
        self.steps > self.warmup_steps && self.progress() >= 1.0
    }

    /// Counted training seconds (warm-up excluded).
    pub fn training_seconds(&self) -> f64 {
        self.counted.as_secs_f64()
    }

    /// Steps finished, warm-up included.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Tokens trained on, warm-up included.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Steps excluded from the training time.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_parsing_accepts_every_kind_and_names_bad_input() {
        assert_eq!(Budget::parse("300").unwrap(), Budget::Time(300.0));
        assert_eq!(Budget::parse("60s").unwrap(), Budget::Time(60.0));
        assert_eq!(Budget::parse("tokens:5e6").unwrap(), Budget::Tokens(5_000_000));
        assert_eq!(Budget::parse("flops:1e15").unwrap(), Budget::Flops(1e15));
        assert!(Budget::parse("bytes:3").unwrap_err().contains("bytes"));
        assert!(Budget::parse("-1").is_err());
        assert!(Budget::parse("abc").unwrap_err().contains("abc"));
    }

    #[test]
    fn warmup_steps_are_not_counted_and_never_end_training() {
        let mut clock = TrainingClock::new(Budget::Tokens(10), 2);
        clock.start_step();
        assert!(!clock.finish_step(100).counted);
        assert!(!clock.done(), "a warm-up step never ends training");
        clock.start_step();
        clock.finish_step(100);
        assert!(!clock.done());
        clock.start_step();
        assert!(clock.finish_step(100).counted);
        assert!(clock.done());
        assert_eq!(clock.tokens(), 300);
        assert_eq!(clock.steps(), 3);
    }

    #[test]
    fn flops_budget_uses_flops_per_token() {
        let mut clock = TrainingClock::new(Budget::Flops(1000.0), 0);
        clock.set_flops_per_token(10.0);
        clock.start_step();
        clock.finish_step(50);
        assert!((clock.progress() - 0.5).abs() < 1e-12);
    }
}
