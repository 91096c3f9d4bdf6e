//! Progress bars with throughput for the long steps (reading and counting the training text,
//! learning merges, tokenizing). indicatif draws nothing when stderr is not a terminal, so
//! logs and tests stay clean.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar (or a spinner when the total is unknown) whose message is the text throughput.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    bytes: u64,
}

impl Progress {
    /// `what` names the step; `len` counts `unit`s (documents, merges), `None` if unknown.
    pub fn new(show: bool, what: &str, len: Option<u64>, unit: &str) -> Self {
        let bar = match (show, len) {
            (false, _) => ProgressBar::hidden(),
            (true, Some(len)) => ProgressBar::new(len),
            (true, None) => ProgressBar::new_spinner(),
        };
        let template = match len {
            Some(_) => format!(
                "{what} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta}}] {{msg}}"
            ),
            None => format!("{what} {{spinner}} {{pos}} {unit} [{{elapsed_precise}}] {{msg}}"),
        };
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            bar,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// `units` more done, covering `bytes` more bytes of text (0 when the step reads none).
    pub fn advance(&mut self, units: u64, bytes: u64) {
        self.bytes += bytes;
        self.bar.inc(units);
        if self.bytes > 0 {
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let mb = self.bytes as f64 / 1e6;
            self.bar
                .set_message(format!("{mb:.0} MB, {:.1} MB/s", mb / secs));
        }
    }

    /// Sets the position (for steps that report how far they are rather than how much more).
    pub fn set_position(&self, units: u64) {
        self.bar.set_position(units);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
