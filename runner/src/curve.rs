//! A run's training curve: the per-step CSV the scorer writes beside the run's summary
//! (`harness --steps-csv`: step, tokens, loss, lr multiplier, tokens/s, elapsed seconds), and
//! the few numbers a person or an agent decides with.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What a curve comes to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve {
    pub steps: u64,
    pub tokens: u64,
    /// The last loss the trainer reported (the last step's comes with no next request).
    pub final_loss: Option<f64>,
    /// Mean and sample standard deviation of tokens/s over the steps after the first, whose
    /// time includes the backend's warm-up (kernel compilation, allocation).
    pub tokens_per_second: Option<f64>,
    pub tokens_per_second_sd: Option<f64>,
    pub elapsed_seconds: f64,
}

/// The curve file of a run whose summary JSON is `summary_json` (`runs/n7-0.json` ->
/// `runs/n7-0.steps.csv`).
pub fn path_for(summary_json: &Path) -> PathBuf {
    summary_json.with_extension("steps.csv")
}

/// The curve of run `attempt` of node `node` (`n7`) in a run's state directory: where the
/// runner asks the scorer to write it.
pub fn of_run(state_dir: &Path, node: &str, attempt: &str) -> Option<Curve> {
    read(&path_for(&crate::layout::run_files(state_dir, node, attempt).summary_json))
}

/// Reads a curve file; None when it is absent or holds no step (a run that failed early).
pub fn read(path: &Path) -> Option<Curve> {
    parse(&std::fs::read_to_string(path).ok()?)
}

/// Parses the scorer's CSV; rows that do not parse are skipped.
pub fn parse(text: &str) -> Option<Curve> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (step, tokens, loss, tps, elapsed) = (col("step")?, col("tokens")?, col("loss")?, col("tokens_per_second")?, col("elapsed_seconds")?);
    let mut curve = Curve { steps: 0, tokens: 0, final_loss: None, tokens_per_second: None, tokens_per_second_sd: None, elapsed_seconds: 0.0 };
    let mut rates = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.trim().parse::<f64>().ok());
        let Some(s) = num(step) else { continue };
        curve.steps = curve.steps.max(s as u64 + 1);
        curve.tokens = curve.tokens.max(num(tokens).unwrap_or(0.0) as u64);
        curve.final_loss = num(loss).or(curve.final_loss);
        curve.elapsed_seconds = curve.elapsed_seconds.max(num(elapsed).unwrap_or(0.0));
        if s > 0.0
            && let Some(r) = num(tps)
        {
            rates.push(r);
        }
    }
    if curve.steps == 0 {
        return None;
    }
    if !rates.is_empty() {
        let (mean, sd) = crate::keep::mean_std(&rates);
        curve.tokens_per_second = Some(mean);
        curve.tokens_per_second_sd = Some(sd);
    }
    Some(curve)
}

impl Curve {
    /// `93 steps, loss 3.412000, 5.1k +- 0.4k tok/s`.
    pub fn describe(&self) -> String {
        let loss = self.final_loss.map(|l| format!(", loss {l:.6}")).unwrap_or_default();
        let rate = match (self.tokens_per_second, self.tokens_per_second_sd) {
            (Some(m), Some(sd)) => format!(", {} +- {} tok/s", kilo(m), kilo(sd)),
            _ => String::new(),
        };
        format!("{} steps{loss}{rate}", self.steps)
    }
}

/// A rate as the views print it: `5.1k`, `496`.
pub fn kilo(x: f64) -> String {
    if x.abs() >= 1000.0 { format!("{:.1}k", x / 1000.0) } else { format!("{x:.0}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_comes_to_its_steps_last_loss_and_steady_rate() {
        let csv = "step,tokens,loss,lr_multiplier,tokens_per_second,elapsed_seconds\n\
                   0,1024,5.5,1.0,200.0,5.0\n\
                   1,2048,5.0,1.0,4000.0,5.3\n\
                   2,3072,4.5,0.5,6000.0,5.5\n\
                   3,4096,,,,5.7\n";
        let c = parse(csv).unwrap();
        assert_eq!((c.steps, c.tokens, c.final_loss), (4, 4096, Some(4.5)));
        assert_eq!(c.tokens_per_second, Some(5000.0), "the first step's warm-up is left out");
        assert!((c.tokens_per_second_sd.unwrap() - 2e6f64.sqrt()).abs() < 1e-9);
        assert_eq!(c.describe(), "4 steps, loss 4.500000, 5.0k +- 1.4k tok/s");
        assert_eq!(parse("step,tokens,loss,lr_multiplier,tokens_per_second,elapsed_seconds\n"), None);
        assert_eq!(parse("nonsense"), None);
        assert_eq!(path_for(Path::new("runs/n7-0.json")), PathBuf::from("runs/n7-0.steps.csv"));
    }
}
