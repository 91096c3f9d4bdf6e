//! Progress: indicatif bars (experiment n/N with the best so far, and a countdown per run in
//! flight) when stderr is a terminal, plain lines otherwise.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    mp: MultiProgress,
    overall: ProgressBar,
}

/// The countdown of one run; removed from the display when dropped. Cheap to move to a worker.
pub struct RunBar {
    mp: MultiProgress,
    bar: ProgressBar,
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
        Progress { mp, overall }
    }

    /// A line above the bars (or on stdout when the bars are hidden).
    pub fn line(&self, s: &str) {
        if self.mp.is_hidden() {
            println!("{s}");
        } else {
            let _ = self.mp.println(s);
        }
    }

    pub fn set_done(&self, n: u64, best: &str, in_flight: usize) {
        self.overall.set_position(n);
        let running = if in_flight > 0 { format!(", {in_flight} running") } else { String::new() };
        self.overall.set_message(format!("best {best}{running}"));
    }

    pub fn run_bar(&self, label: &str, timeout: Duration) -> RunBar {
        let b = self.mp.add(ProgressBar::new(timeout.as_secs().max(1)));
        b.set_style(
            ProgressStyle::with_template("  {msg} [{bar:30}] {elapsed} {prefix}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(label.to_string());
        b.set_prefix(format!("(killed in {}s)", timeout.as_secs()));
        RunBar { mp: self.mp.clone(), bar: b }
    }

    pub fn finish(&self) {
        self.overall.finish();
    }
}

impl RunBar {
    pub fn tick(&self, elapsed: Duration) {
        let at = elapsed.as_secs();
        if at != self.bar.position() {
            self.bar.set_position(at);
            // indicatif's {eta} extrapolates a rate; the deadline is known exactly.
            let len = self.bar.length().unwrap_or(0);
            self.bar.set_prefix(format!("(killed in {}s)", len.saturating_sub(at)));
        }
    }
}

impl Drop for RunBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        self.mp.remove(&self.bar);
    }
}
