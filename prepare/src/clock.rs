//! The training budget and the harness's clock that enforces it.
//!
//! The trainer runs in another process and asks the harness for each optimizer step's data;
//! the clock decides whether it gets it. It starts when the trainer is started, so nothing the
//! trainer does is untimed except its warm-up:
//!
//! - **warm-up**: the first `warmup_steps` steps (compilation, allocator warm-up) are not
//!   counted, but warm-up ends at the latest one allowance after the start, whatever the
//!   trainer does meanwhile. The allowance comes from the profile and is at most 5 % of a time
//!   budget ([`allowance`]).
//! - **counted time** runs from the end of warm-up. A time budget is spent once the counted
//!   time reaches it; a token budget once the tokens handed out reach it (every token counts,
//!   warm-up included, so it is enforced, not reported); a FLOPs budget multiplies tokens by the
//!   FLOPs per token the trainer reports.
//! - **over budget**: the trainer must say it finished training within a grace of the budget's
//!   end, for the step in flight when the budget runs out: the allowance, or two typical steps
//!   (twice the median time between step requests) when steps are longer. Later is a crash.
//!
//! Time is passed in, so the rules are tested without sleeping.

use std::time::{Duration, Instant};

/// The budget is the runner's type too (it asks for one on every run's command line): it lives in
/// `sealed`, which both link without Burn.
pub use contract::budget::{Budget, BudgetError};

/// The largest share of a time budget the warm-up allowance may be.
pub const MAX_ALLOWANCE_FRACTION: f64 = 0.05;

/// The warm-up allowance: the profile's seconds, at most 5 % of a time budget.
pub fn allowance(budget: Budget, profile_seconds: f64) -> Duration {
    let s = match budget {
        Budget::Time(t) => profile_seconds.min(MAX_ALLOWANCE_FRACTION * t),
        _ => profile_seconds,
    };
    Duration::from_secs_f64(s.max(0.0))
}

/// What the clock says to a request for a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Hand out step `step`; `progress` is the fraction of the budget spent, in `[0, 1]`.
    Serve { step: u64, progress: f64 },
    /// The budget is spent.
    Spent,
}

/// Training finished past the budget's end plus the allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverBudget {
    /// Counted seconds at the finish.
    pub counted: f64,
    /// The most that was allowed.
    pub limit: f64,
}

/// The harness's clock for one training run.
#[derive(Debug, Clone)]
pub struct Clock {
    budget: Budget,
    warmup_steps: u64,
    allowance: Duration,
    started: Instant,
    warmup_end: Option<Instant>,
    finished: Option<Instant>,
    steps: u64,
    tokens: u64,
    counted_tokens: u64,
    flops_per_token: f64,
    /// When each step after warm-up was asked for.
    requests: Vec<Instant>,
}

impl Clock {
    /// A clock started at `started` (when the trainer process was started).
    pub fn new(budget: Budget, warmup_steps: u64, allowance: Duration, started: Instant) -> Clock {
        Clock {
            budget,
            warmup_steps,
            allowance,
            started,
            warmup_end: None,
            finished: None,
            steps: 0,
            tokens: 0,
            counted_tokens: 0,
            flops_per_token: 0.0,
            requests: Vec::new(),
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn allowance(&self) -> Duration {
        self.allowance
    }

    /// The trainer's FLOPs per token, for a FLOPs budget.
    pub fn set_flops_per_token(&mut self, flops_per_token: f64) {
        self.flops_per_token = flops_per_token;
    }

    /// Ends warm-up when its steps are done or its allowance is used up.
    fn update_warmup(&mut self, now: Instant) {
        if self.warmup_end.is_none() {
            let cap = self.started + self.allowance;
            if now >= cap {
                self.warmup_end = Some(cap);
            } else if self.steps >= self.warmup_steps {
                self.warmup_end = Some(now);
            }
        }
    }

    /// Seconds counted against a time budget at `now`.
    pub fn counted_seconds(&self, now: Instant) -> f64 {
        let end = self.finished.unwrap_or(now);
        match self.warmup_end {
            Some(w) if end > w => (end - w).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Fraction of the budget spent at `now`, in `[0, 1]`.
    pub fn progress(&self, now: Instant) -> f64 {
        let p = match self.budget {
            Budget::Time(secs) => self.counted_seconds(now) / secs,
            Budget::Tokens(n) => self.tokens as f64 / n as f64,
            Budget::Flops(f) => self.tokens as f64 * self.flops_per_token / f,
        };
        p.clamp(0.0, 1.0)
    }

    /// The trainer asks for a step at `now`.
    pub fn request(&mut self, now: Instant) -> Decision {
        self.update_warmup(now);
        if self.warmup_end.is_some() {
            self.requests.push(now);
        }
        if self.warmup_end.is_some() && self.progress(now) >= 1.0 {
            return Decision::Spent;
        }
        Decision::Serve { step: self.steps, progress: self.progress(now) }
    }

    /// A step of `tokens` tokens was handed out (after [`Decision::Serve`]).
    pub fn served(&mut self, tokens: u64) {
        if self.warmup_end.is_some() {
            self.counted_tokens += tokens;
        }
        self.steps += 1;
        self.tokens += tokens;
    }

    /// How long after the budget's end training may still finish: the allowance, or twice the
    /// median time between step requests when steps are longer (the step in flight when the
    /// budget ran out must be able to end).
    pub fn grace(&self) -> Duration {
        let mut gaps: Vec<Duration> = self.requests.windows(2).map(|w| w[1] - w[0]).collect();
        if gaps.is_empty() {
            return self.allowance;
        }
        gaps.sort();
        self.allowance.max(2 * gaps[gaps.len() / 2])
    }

    /// The latest instant the trainer may finish training, for a time budget: the grace after
    /// the budget's end (the end of warm-up is at most one allowance after the start).
    pub fn deadline(&self) -> Option<Instant> {
        let Budget::Time(secs) = self.budget else { return None };
        let warmup_end = self.warmup_end.unwrap_or(self.started + self.allowance);
        Some(warmup_end + Duration::from_secs_f64(secs) + self.grace())
    }

    /// The most counted seconds a time budget allows before training is over budget.
    pub fn budget_limit_seconds(&self) -> f64 {
        match self.budget {
            Budget::Time(secs) => secs + self.grace().as_secs_f64(),
            _ => f64::INFINITY,
        }
    }

    /// How far over budget a trainer that has not finished by `now` is.
    pub fn overdue(&mut self, now: Instant) -> OverBudget {
        self.update_warmup(now);
        OverBudget { counted: self.counted_seconds(now), limit: self.budget_limit_seconds() }
    }

    /// The trainer said it finished training at `now`.
    pub fn finish(&mut self, now: Instant) -> Result<(), OverBudget> {
        self.update_warmup(now);
        if self.warmup_end.is_none() {
            self.warmup_end = Some(now);
        }
        self.finished = Some(now);
        if let Budget::Time(_) = self.budget {
            let limit = self.budget_limit_seconds();
            let counted = self.counted_seconds(now);
            if counted > limit {
                return Err(OverBudget { counted, limit });
            }
        }
        Ok(())
    }

    /// Counted training seconds (warm-up excluded), up to the finish.
    pub fn training_seconds(&self) -> f64 {
        self.counted_seconds(self.finished.unwrap_or(self.started))
    }

    /// Seconds from the start to the end of warm-up.
    pub fn warmup_seconds(&self) -> f64 {
        self.warmup_end.map(|w| (w - self.started).as_secs_f64()).unwrap_or(0.0)
    }

    /// Steps handed out, warm-up included.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Tokens handed out, warm-up included.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Tokens handed out after warm-up (what MFU and throughput count).
    pub fn counted_tokens(&self) -> u64 {
        self.counted_tokens
    }

    /// Steps that were warm-up.
    pub fn warmup_steps_taken(&self) -> u64 {
        self.steps - self.steps_after_warmup()
    }

    fn steps_after_warmup(&self) -> u64 {
        // Every step has the same size in the trainers this harness runs; a trainer that varies
        // it only moves its own MFU figure.
        if self.tokens == 0 { 0 } else { (self.steps as f64 * self.counted_tokens as f64 / self.tokens as f64).round() as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn the_allowance_is_the_profiles_but_at_most_five_percent_of_a_time_budget() {
        assert_eq!(allowance(Budget::Time(300.0), 30.0), Duration::from_secs(15));
        assert_eq!(allowance(Budget::Time(300.0), 5.0), Duration::from_secs(5));
        assert_eq!(allowance(Budget::Tokens(10), 30.0), Duration::from_secs(30));
    }

    #[test]
    fn warmup_steps_are_not_counted_and_the_budget_stops_training() {
        let t0 = Instant::now();
        let mut c = Clock::new(Budget::Time(10.0), 2, Duration::from_secs(5), t0);
        // Two warm-up steps, 1 s each: nothing counted.
        for (i, s) in [0.0, 1.0].into_iter().enumerate() {
            assert_eq!(c.request(at(t0, s)), Decision::Serve { step: i as u64, progress: 0.0 });
            c.served(100);
        }
        assert_eq!(c.request(at(t0, 2.0)), Decision::Serve { step: 2, progress: 0.0 });
        c.served(100);
        assert_eq!(c.request(at(t0, 7.0)), Decision::Serve { step: 3, progress: 0.5 });
        c.served(100);
        assert_eq!(c.request(at(t0, 12.0)), Decision::Spent);
        // Counted steps came 5 s apart (2 s, 7 s, 12 s): two of them beat the 5 s allowance.
        assert_eq!(c.deadline(), Some(at(t0, 2.0 + 10.0 + 10.0)));
        c.finish(at(t0, 12.5)).unwrap();
        assert!((c.training_seconds() - 10.5).abs() < 1e-9);
        assert_eq!((c.steps(), c.tokens(), c.counted_tokens()), (4, 400, 200));
        assert!((c.warmup_seconds() - 2.0).abs() < 1e-9);
        assert_eq!(c.warmup_steps_taken(), 2);
    }

    #[test]
    fn a_slow_warmup_ends_at_the_allowance_and_time_spent_before_any_step_counts() {
        let t0 = Instant::now();
        let mut c = Clock::new(Budget::Time(100.0), 10, Duration::from_secs(5), t0);
        // The trainer spends 20 s before its first request: 15 s of it are counted.
        assert_eq!(c.request(at(t0, 20.0)), Decision::Serve { step: 0, progress: 0.15 });
        assert!((c.warmup_seconds() - 5.0).abs() < 1e-9);
        assert_eq!(c.deadline(), Some(at(t0, 5.0 + 100.0 + 5.0)));
    }

    #[test]
    fn finishing_past_the_budget_and_the_allowance_is_over_budget() {
        let t0 = Instant::now();
        let mut c = Clock::new(Budget::Time(10.0), 0, Duration::from_secs(1), t0);
        assert!(matches!(c.request(t0), Decision::Serve { .. }));
        c.served(1);
        let err = c.finish(at(t0, 11.5)).unwrap_err();
        assert!((err.counted - 11.5).abs() < 1e-9 && (err.limit - 11.0).abs() < 1e-9, "{err:?}");
        let mut c = Clock::new(Budget::Time(10.0), 0, Duration::from_secs(1), t0);
        c.request(t0);
        c.finish(at(t0, 10.9)).unwrap();
    }

    #[test]
    fn steps_longer_than_the_allowance_get_two_steps_of_grace() {
        let t0 = Instant::now();
        let mut c = Clock::new(Budget::Time(10.0), 0, Duration::from_millis(500), t0);
        for i in 0..4 {
            // Steps of 3 s: the last one, asked for at 9 s, ends at 12 s.
            assert!(matches!(c.request(at(t0, 3.0 * i as f64)), Decision::Serve { .. }));
            c.served(1);
        }
        assert_eq!(c.grace(), Duration::from_secs(6));
        assert_eq!(c.deadline(), Some(at(t0, 16.0)));
        c.finish(at(t0, 12.1)).unwrap();
        assert!((c.budget_limit_seconds() - 16.0).abs() < 1e-9);
    }

    #[test]
    fn a_token_budget_counts_every_token_handed_out_warmup_included() {
        let t0 = Instant::now();
        let mut c = Clock::new(Budget::Tokens(300), 1, Duration::from_secs(30), t0);
        for i in 0..3 {
            assert!(matches!(c.request(at(t0, i as f64)), Decision::Serve { .. }));
            c.served(100);
        }
        assert_eq!(c.request(at(t0, 3.0)), Decision::Spent);
        assert_eq!(c.deadline(), None);
        c.finish(at(t0, 1000.0)).unwrap();
        assert_eq!((c.steps(), c.tokens(), c.counted_tokens()), (3, 300, 200));
    }

    #[test]
    fn a_flops_budget_uses_the_reported_flops_per_token() {
        let t0 = Instant::now();
        let mut c = Clock::new(Budget::Flops(1000.0), 0, Duration::ZERO, t0);
        c.set_flops_per_token(10.0);
        assert!(matches!(c.request(t0), Decision::Serve { .. }));
        c.served(50);
        assert!((c.progress(t0) - 0.5).abs() < 1e-12);
        c.served(50);
        assert_eq!(c.request(t0), Decision::Spent);
    }
}
