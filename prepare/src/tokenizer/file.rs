//! `tokenizer.json`: the learned merges, with the split pattern and the specials they go with.
//!
//! ```text
//! {
//!   "format": "autoresearch-bpe-1",
//!   "pattern": "<the split pattern>",
//!   "special_tokens": ["<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"],
//!   "merges": [
//!     [32, 116],
//!     ...
//!   ]
//! }
//! ```
//!
//! Ids 0..=255 are the bytes; merge `k` joins two earlier ids into id `256 + k` (rustbpe's
//! numbering, so that tiktoken's ranks are the ids); the specials follow the merges. The
//! layout is written by hand, one merge per line, so the file (whose sha256 is the vocabulary
//! fingerprint) is stable and readable.

use serde::Deserialize;

use super::train::Pair;
use crate::constants::{SPECIAL_TOKENS, SPLIT_PATTERN};

/// The `format` this build writes and reads.
pub const FORMAT: &str = "autoresearch-bpe-1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizerFile {
    format: String,
    pattern: String,
    special_tokens: Vec<String>,
    merges: Vec<Pair>,
}

/// The text of `tokenizer.json` for `merges`.
pub fn to_json(merges: &[Pair]) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let specials: Vec<String> = SPECIAL_TOKENS.iter().map(|s| quoted(s)).collect();
    let mut json = format!(
        "{{\n  \"format\": {},\n  \"pattern\": {},\n  \"special_tokens\": [{}],\n  \"merges\": [",
        quoted(FORMAT),
        quoted(SPLIT_PATTERN),
        specials.join(", ")
    );
    for (k, (left, right)) in merges.iter().enumerate() {
        let sep = if k == 0 { "" } else { "," };
        json.push_str(&format!("{sep}\n    [{left}, {right}]"));
    }
    json.push_str("\n  ]\n}\n");
    json
}

/// The merges of a `tokenizer.json`, or why it is not one this build can use.
pub fn from_json(json: &str) -> Result<Vec<Pair>, String> {
    let file: TokenizerFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if file.format != FORMAT {
        return Err(format!(
            "format {:?}, this build reads {FORMAT:?}",
            file.format
        ));
    }
    if file.pattern != SPLIT_PATTERN {
        return Err(format!(
            "split pattern {:?} is not this build's {SPLIT_PATTERN:?}",
            file.pattern
        ));
    }
    if file.special_tokens != SPECIAL_TOKENS {
        return Err(format!(
            "special tokens {:?}, expected {SPECIAL_TOKENS:?}",
            file.special_tokens
        ));
    }
    let vocab = 256 + file.merges.len() + SPECIAL_TOKENS.len();
    if vocab > 1 << 16 {
        return Err(format!("{vocab} ids do not fit in 16 bits"));
    }
    for (k, &(left, right)) in file.merges.iter().enumerate() {
        let new_id = 256 + k as u32;
        if left >= new_id || right >= new_id {
            return Err(format!(
                "merge {k} ({left}, {right}) names an id not made before {new_id}"
            ));
        }
    }
    Ok(file.merges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_round_trip() {
        let merges = vec![(104, 101), (256, 108), (32, 257)];
        assert_eq!(from_json(&to_json(&merges)).unwrap(), merges);
        assert_eq!(from_json(&to_json(&[])).unwrap(), vec![]);
    }

    #[test]
    fn foreign_files_say_why() {
        let good = to_json(&[(104, 101)]);
        let cases = [
            (good.replace(FORMAT, "autoresearch-bpe-0"), "format"),
            (
                good.replace("\\\\p{N}{1,2}", "\\\\p{N}{1,3}"),
                "split pattern",
            ),
            (good.replace("reserved_3", "reserved_9"), "special tokens"),
            (good.replace("[104, 101]", "[104, 256]"), "names an id"),
            (good.replace("\"merges\"", "\"merge\""), "unknown field"),
            ("not json".to_string(), "expected"),
        ];
        for (json, reason) in cases {
            assert_ne!(json, good, "the case for {reason} changes the file");
            let err = from_json(&json).unwrap_err();
            assert!(err.contains(reason), "{reason}: {err}");
        }
    }
}
