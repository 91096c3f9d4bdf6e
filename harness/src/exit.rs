//! Exit codes of the `harness` binary: the runner decides keep / discard / crash / retry by them.

/// The run finished and printed its summary.
pub const SUCCESS: i32 = 0;
/// Training diverged (NaN loss or loss above 100): `FAIL` was printed, as the reference does.
pub const DIVERGED: i32 = 1;
/// Bad command line, unreadable profile or hyperparameter file, device not compiled in.
pub const USAGE: i32 = 2;
/// The device ran out of memory; the runner retries with `--device-batch-scale` halved.
pub const OUT_OF_MEMORY: i32 = 3;
/// The model failed an evaluation check: a witness row's log-probabilities changed with the
/// rows it was evaluated with (it learns from its group), or a counted target's log-probability
/// was not finite.
pub const CAUSALITY_VIOLATION: i32 = 4;
/// Prepared data missing or corrupt: run `prepare` first.
pub const DATA_ERROR: i32 = 5;
/// Any other failure: the trainer crashed, hung, broke the protocol or went over budget.
pub const OTHER_FAILURE: i32 = 6;

/// Why a run stopped early: the exit code and the message for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Every exit code with its short name (as written in `--summary-json` `status`) and meaning.
pub const EXIT_CODES: &[(i32, &str, &str)] = &[
    (SUCCESS, "ok", "success: the summary block was printed"),
    (DIVERGED, "diverged", "FAIL: the training loss went NaN or above 100"),
    (USAGE, "usage", "usage or configuration error (arguments, profile, hparams file, device)"),
    (OUT_OF_MEMORY, "oom", "out of memory (retry with a smaller --device-batch-scale)"),
    (CAUSALITY_VIOLATION, "causality", "failed evaluation check: a row's predictions depend on the rows it was evaluated with, or a log-probability is not finite"),
    (DATA_ERROR, "data", "prepared data missing or corrupt (run prepare)"),
    (OTHER_FAILURE, "error", "any other failure (the trainer crashed, hung, broke the protocol, or went over budget)"),
];

/// Short name of an exit code (`"ok"`, `"oom"`...), `"unknown"` for codes not listed.
pub fn status_name(code: i32) -> &'static str {
    EXIT_CODES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, name, _)| *name)
        .unwrap_or("unknown")
}

/// The exit-code table as help text, one line per code.
pub fn help_text() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, _, meaning) in EXIT_CODES {
        text.push_str(&format!("  {code}  {meaning}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_named() {
        for (i, (a, _, _)) in EXIT_CODES.iter().enumerate() {
            for (b, _, _) in &EXIT_CODES[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(status_name(OUT_OF_MEMORY), "oom");
        assert_eq!(status_name(42), "unknown");
        assert!(help_text().contains("  4  failed evaluation check"));
    }
}
