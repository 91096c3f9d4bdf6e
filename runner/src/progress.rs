//! Progress: indicatif bars (experiment n/N with the best so far, a countdown for the current
//! run) when stderr is a terminal, plain lines otherwise.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    mp: MultiProgress,
    overall: ProgressBar,
    current: Option<ProgressBar>,
}

impl Progress {
    pub fn new(total: u64) -> Progress {
        let mp = MultiProgress::new();
        let overall = if total > 0 {
            let b = mp.add(ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template("experiment {pos}/{len} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        } else {
            let b = mp.add(ProgressBar::new_spinner());
            b.set_style(ProgressStyle::with_template("experiment {pos} (unlimited) {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            b
        };
        Progress { mp, overall, current: None }
    }

    /// A line above the bars (or on stdout when the bars are hidden).
    pub fn line(&self, s: &str) {
        if self.mp.is_hidden() {
            println!("{s}");
        } else {
            let _ = self.mp.println(s);
        }
    }

    pub fn set_done(&self, n: u64, best: &str) {
        self.overall.set_position(n);
        self.overall.set_message(format!("best {best}"));
    }

    pub fn start_run(&mut self, label: &str, timeout: Duration) {
        let b = self.mp.add(ProgressBar::new(timeout.as_secs().max(1)));
        b.set_style(
            ProgressStyle::with_template("  {msg} [{bar:30}] {elapsed} (killed at {len}s, {eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(label.to_string());
        self.current = Some(b);
    }

    pub fn tick(&self, elapsed: Duration) {
        if let Some(b) = &self.current {
            b.set_position(elapsed.as_secs());
        }
    }

    pub fn end_run(&mut self) {
        if let Some(b) = self.current.take() {
            b.finish_and_clear();
            self.mp.remove(&b);
        }
    }

    pub fn finish(&self) {
        self.overall.finish();
    }
}
