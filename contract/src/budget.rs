//! The training budget: one type for the harness, which enforces it (`prepare::clock`), and the
//! runner, which asks for it on every run's command line. It is parsed once, where it enters (a
//! flag, a config file), and passed on typed; the two used to parse it apart and disagreed (the
//! harness took `300s`, the runner refused it). Here because this crate is the one both link
//! without Burn.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How much training an experiment gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Counted wall-clock seconds (warm-up excluded), as the reference.
    Time(f64),
    /// Training tokens, warm-up included: comparable across hardware.
    Tokens(u64),
    /// Training FLOPs (tokens x FLOPs per token), warm-up included: comparable across models
    /// too. The FLOPs per token are the trainer's own figure.
    Flops(f64),
}

/// What a budget may be written as, for every error message.
const FORMS: &str = "write SECONDS, time:SECONDS, tokens:N or flops:N, e.g. 300, 300s, time:300, tokens:5e6, flops:1e15";

/// Why a budget spec was refused. Where it came from (a flag, a config key) is for the edge
/// that read it to say; the message says what is wrong and what to write instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error("budget `{spec}`: `{amount}` is not a number ({})", FORMS)]
    NotANumber { spec: String, amount: String },
    #[error("budget `{spec}`: the amount must be a positive number ({})", FORMS)]
    NotPositive { spec: String },
    #[error("budget `{spec}`: unknown kind `{kind}` ({})", FORMS)]
    UnknownKind { spec: String, kind: String },
}

impl Budget {
    /// Parses `300`, `300s`, `time:300`, `tokens:5e6`, `flops:1e15`.
    pub fn parse(spec: &str) -> Result<Budget, BudgetError> {
        let spec = spec.trim();
        let (kind, amount) = match spec.split_once(':') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => ("time", spec.trim_end_matches('s')),
        };
        let number: f64 = amount.parse().map_err(|_| BudgetError::NotANumber { spec: spec.into(), amount: amount.into() })?;
        if !(number.is_finite() && number > 0.0) {
            return Err(BudgetError::NotPositive { spec: spec.into() });
        }
        match kind {
            "time" => Ok(Budget::Time(number)),
            "tokens" => Ok(Budget::Tokens(number as u64)),
            "flops" => Ok(Budget::Flops(number)),
            other => Err(BudgetError::UnknownKind { spec: spec.into(), kind: other.into() }),
        }
    }

    /// The spec the runner hands an experiment (the harness's `--budget`, an experiment
    /// command's `{budget}` and `AUTORESEARCH_BUDGET`): every digit written out, so that a
    /// command that does arithmetic on it need not read exponents.
    pub fn spec(&self) -> String {
        match self {
            Budget::Time(s) => format!("time:{s}"),
            Budget::Tokens(n) => format!("tokens:{n}"),
            Budget::Flops(x) => format!("flops:{x}"),
        }
    }
}

/// The budget as the harness reports it (its summary, its log, the trainer's `Run`), and as a
/// config stores it.
impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Time(s) => write!(f, "time:{s}"),
            Budget::Tokens(n) => write!(f, "tokens:{n}"),
            Budget::Flops(x) => write!(f, "flops:{x:e}"),
        }
    }
}

impl std::str::FromStr for Budget {
    type Err = BudgetError;

    fn from_str(spec: &str) -> Result<Budget, BudgetError> {
        Budget::parse(spec)
    }
}

/// A spec string, as a person writes it in a config file.
impl Serialize for Budget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Budget, D::Error> {
        let spec = String::deserialize(deserializer)?;
        Budget::parse(&spec).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness's cases (from prepare's clock) and the runner's (from its config), on the
    /// one parser.
    #[test]
    fn budget_parsing_accepts_every_kind_and_names_bad_input() {
        assert_eq!(Budget::parse("300").unwrap(), Budget::Time(300.0));
        assert_eq!(Budget::parse("60s").unwrap(), Budget::Time(60.0));
        assert_eq!(Budget::parse("tokens:5e6").unwrap(), Budget::Tokens(5_000_000));
        assert_eq!(Budget::parse("flops:1e15").unwrap(), Budget::Flops(1e15));
        assert_eq!(Budget::parse("flops:1e15").unwrap().spec(), "flops:1000000000000000");
        assert!(Budget::parse("bytes:3").unwrap_err().to_string().contains("bytes"));
        assert!(Budget::parse("steps:3").is_err());
        assert!(Budget::parse("-1").is_err());
        assert!(Budget::parse("time:-1").is_err());
        assert!(Budget::parse("abc").unwrap_err().to_string().contains("abc"));
    }

    #[test]
    fn an_error_says_what_to_write() {
        let cases = [
            ("steps:3", BudgetError::UnknownKind { spec: "steps:3".into(), kind: "steps".into() }),
            ("time:soon", BudgetError::NotANumber { spec: "time:soon".into(), amount: "soon".into() }),
            ("0", BudgetError::NotPositive { spec: "0".into() }),
        ];
        for (spec, error) in cases {
            let got = Budget::parse(spec).unwrap_err();
            assert_eq!(got, error);
            assert!(got.to_string().starts_with(&format!("budget `{spec}`: ")) && got.to_string().contains("tokens:N"), "{got}");
        }
    }

    /// The harness's report (`flops:1e15`) and the runner's command line (every digit) read back
    /// as the same budget, and a config stores the budget as its spec.
    #[test]
    fn every_spelling_reads_back_as_the_same_budget() {
        for b in [Budget::Time(300.0), Budget::Time(0.5), Budget::Tokens(5_000_000), Budget::Flops(1e15), Budget::Flops(2.5e17)] {
            assert_eq!(Budget::parse(&b.to_string()).unwrap(), b);
            assert_eq!(Budget::parse(&b.spec()).unwrap(), b);
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{b}\""));
            assert_eq!(serde_json::from_str::<Budget>(&json).unwrap(), b);
        }
        assert_eq!(Budget::Time(300.0).spec(), "time:300");
        assert_eq!(Budget::Flops(1e15).to_string(), "flops:1e15");
        let err = serde_json::from_str::<Budget>("\"steps:3\"").unwrap_err().to_string();
        assert!(err.contains("unknown kind `steps`"), "{err}");
    }
}
